// The README's browser snippet (its html block marked `doc-test: browser`) runs as written in
// Chromium: served as the page at / by the demo app (tests/js/jsapp.py `readme_page`), it joins
// `lobby` as Ann and says hi; a Node client in the room receives it, and the page logs its ack.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { SmartSocket } from "../../js/src/smartsocket.js";
import { WebSocket, next, startServer, until } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

describe("the README's browser snippet", () => {
  let server, browser;
  before(async () => {
    server = await startServer({ app: "jsapp:readme_page" });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  it("runs in Chromium: joins the room, its chat reaches another member, its ack comes back", async () => {
    const bob = new SmartSocket(server.url, { WebSocket });
    await bob.connect();
    await bob.call("join", { room: "lobby", name: "Bob" });
    const heard = next(bob, "chat", 10000);

    const page = await browser.context.newPage();
    const logs = [];
    const errors = [];
    page.on("console", (msg) => (msg.type() === "error" ? errors : logs).push(msg.text()));
    page.on("pageerror", (err) => errors.push(err.message));
    await page.goto(`${server.http}/`);

    const chat = await heard;
    assert.equal(chat.text, "hi");
    assert.equal(chat.name, "Ann");
    await until(() => logs.includes("delivered to 1 other member(s)"), 5000, "the snippet's ack");
    bob.send("chat", { room: "lobby", text: "hello Ann" });
    await until(() => logs.includes("Bob hello Ann"), 5000, "the snippet's chat handler");
    assert.deepEqual(errors, []);
    await bob.close();
  });
});
