// Chromium's native WebSocket negotiates permessage-deflate with the server and both sides
// compress: checked with the server's own counters while a page exchanges a large message.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

describe("permessage-deflate with Chromium's WebSocket", () => {
  let server, browser;
  before(async () => {
    server = await startServer();
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  it("compresses both ways, transparently", async () => {
    const page = await browser.open(`${server.http}/smartsocket/dashboard`);
    const statsBefore = await (await fetch(`${server.http}/smartsocket/stats`)).json();
    const result = await page.evaluate(async (url) => {
      const text = "the quick brown fox jumps over the lazy dog ".repeat(50);
      const ws = new WebSocket(url, "smartsocket.v1");
      const messages = [];
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = reject;
      });
      const reply = new Promise((resolve) => {
        ws.onmessage = (e) => {
          const message = JSON.parse(e.data);
          messages.push(message);
          if (message[0] === 1) resolve(message);
        };
      });
      ws.send(JSON.stringify(["echo", { text }, 1]));
      const [, data] = await reply;
      ws.close();
      return { extensions: ws.extensions, same: data.text === text, first: messages[0][0] };
    }, server.url);
    assert.match(result.extensions, /permessage-deflate/);
    assert.equal(result.first, "$welcome");
    assert.ok(result.same, "the echo came back intact");
    const after = (await (await fetch(`${server.http}/smartsocket/stats`)).json()).raw;
    const before = statsBefore.raw;
    const inPayload = after.bytesIn - before.bytesIn;
    const inWire = after.bytesInWire - before.bytesInWire;
    assert.ok(inWire < inPayload / 4, `Chromium compressed: ${inWire} bytes for ${inPayload}`);
    assert.ok(after.compressedMessagesOut - before.compressedMessagesOut >= 1);
    assert.deepEqual(browser.errors, []);
  });
});
