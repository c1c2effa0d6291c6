// Session recovery in headless Chromium: the client served at /smartsocket/client.js (the page
// at / loads it) resumes after the server cuts its connection mid-stream (TCP abort, no close
// frame), and the page sees every room message once, in order, on the same session.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

describe("recovery in Chromium", () => {
  let server, browser;
  before(async () => {
    server = await startServer({ app: "jsapp:create", args: ["--recovery-window", "5"] });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  it("resumes after the server aborts the connection: the page sees every message once", async () => {
    const page = await browser.open(`${server.http}/`);
    const count = 120;
    const result = await page.evaluate(async (count) => {
      const until = async (predicate, ms, what) => {
        const deadline = Date.now() + ms;
        while (!predicate()) {
          if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      };
      const socket = new SmartSocket({ reconnectDelay: 50, reconnectDelayMax: 200 });
      const ticks = [];
      const events = [];
      socket.on("tick", (n) => ticks.push(n));
      socket.on("connect", (info) => events.push(info));
      socket.on("disconnect", (info) => events.push(info.code));
      await socket.connect();
      const sid = socket.id;
      await socket.call("enter", "busy");
      await socket.call("stream", { room: "busy", count, delay: 0.01 });
      await until(() => ticks.length >= 30, 10000, "30 ticks");
      socket.send("abort");
      await until(() => ticks.length >= count, 20000, `${count} ticks`);
      await new Promise((resolve) => setTimeout(resolve, 100)); // nothing more comes in
      const out = { ticks, events: events.slice(), sameId: socket.id === sid, recovered: socket.recovered };
      await socket.close();
      return out;
    }, count);
    assert.deepEqual(result.ticks, Array.from({ length: count }, (_, i) => i + 1));
    assert.deepEqual(result.events, [{ recovered: false }, 1006, { recovered: true }]);
    assert.equal(result.sameId, true);
    assert.equal(result.recovered, true);
    assert.deepEqual(browser.errors, []);
    await page.close();
  });
});
