// The demo chat with the longest room name allowed (max_name_length, 128 characters, no spaces)
// at phone width (390 px) and on a desktop: nothing is wider than the screen, the Send button
// stays on it, and the full name is still there on hover.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

const SCREENS = { phone: { width: 390, height: 800 }, desktop: { width: 1280, height: 800 } };

describe("the demo chat with long room names", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.kill();
  });

  for (const [screen, viewport] of Object.entries(SCREENS)) {
    for (const length of [32, 128]) {
      it(`fits a ${screen} screen (${viewport.width} px) with a ${length}-character room name`, async () => {
        const browser = await launch({ viewport });
        try {
          const room = "r".repeat(length - 4) + "long";
          const page = await browser.open(`${server.http}/?name=Alice&room=${room}`);
          await page.waitForFunction((r) => document.getElementById("room-title").textContent === "#" + r, room);
          await page.waitForFunction(() => [...document.querySelectorAll("#log .sys")].some((n) => n.textContent.startsWith("You joined")));
          await page.fill("#text", "hello");
          await page.press("#text", "Enter");
          await page.waitForFunction(() => document.querySelector(".msg.mine .meta")?.textContent.includes("delivered"));
          const layout = await page.evaluate(() => ({
            scrollWidth: document.documentElement.scrollWidth,
            bodyWidth: document.body.scrollWidth,
            viewport: window.innerWidth,
            send: document.getElementById("send").getBoundingClientRect().right,
            title: document.getElementById("room-title").title,
          }));
          assert.ok(layout.scrollWidth <= layout.viewport, `page ${layout.scrollWidth - layout.viewport} px wider than the screen`);
          assert.ok(layout.bodyWidth <= layout.viewport, `body ${layout.bodyWidth - layout.viewport} px wider than the screen`);
          assert.ok(layout.send <= layout.viewport, "the Send button is on the screen");
          assert.equal(layout.title, "#" + room);
          assert.deepEqual(browser.errors, []);
        } finally {
          await browser.close();
        }
      });
    }
  }
});
