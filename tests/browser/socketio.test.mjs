// socket.io-client's browser bundle in headless Chromium against the Socket.IO endpoint: over
// polling then WebSocket (the default), over polling only, and from another origin (CORS).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

/** In the page: connect with `options`, run the exchanges, report what came back. */
function exchange(page, url, options) {
  return page.evaluate(
    async ([url, options]) => {
      const socket = io(url, { reconnection: false, ...options });
      await new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      });
      const echoed = await socket.emitWithAck("echo", { text: "héllo" });
      const blob = await socket.emitWithAck("blob", new Uint8Array([5, 6]).buffer);
      const moved = await new Promise((resolve) => socket.emit("move", 1, 2, (...args) => resolve(args)));
      await socket.emitWithAck("enter", "browser");
      const shouted = new Promise((resolve) => socket.once("shouted", resolve));
      await socket.emitWithAck("shout", { room: "browser", text: "all" });
      const result = {
        echoed,
        got: [...new Uint8Array(blob.got)],
        extra: [...new Uint8Array(blob.extra)],
        moved,
        shouted: await shouted,
        transport: socket.io.engine.transport.name,
      };
      socket.disconnect();
      return result;
    },
    [url, options],
  );
}

describe("socket.io-client in Chromium", () => {
  let server, browser, page;
  before(async () => {
    server = await startServer({ app: "jsapp:socketio_page" });
    browser = await launch();
    page = await browser.open(`${server.http}/`);
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  const expected = { echoed: { text: "héllo" }, got: [5, 6], extra: [0, 255], moved: [2, 1], shouted: "all" };

  it("connects with the default transports and upgrades to WebSocket", async () => {
    const result = await exchange(page, server.http, {});
    assert.deepEqual({ ...result, transport: undefined }, { ...expected, transport: undefined });
  });

  it("works over polling only", async () => {
    const result = await exchange(page, server.http, { transports: ["polling"] });
    assert.deepEqual(result, { ...expected, transport: "polling" });
  });

  it("works from another origin (CORS on polling)", async () => {
    const other = `http://localhost:${server.port}`; // another origin than the page's
    const result = await exchange(page, other, { transports: ["polling"] });
    assert.deepEqual(result, { ...expected, transport: "polling" });
    assert.deepEqual(browser.errors, []);
  });
});
