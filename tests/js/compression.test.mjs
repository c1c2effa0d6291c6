// permessage-deflate interop with Node's `ws` as an independent peer: both directions compress,
// the server's counters show it (wire bytes well under payload bytes), small messages go plain.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { WebSocket, startServer } from "./helpers.mjs";

const TEXT = "the quick brown fox jumps over the lazy dog ".repeat(40);

async function stats(server) {
  const response = await fetch(`${server.http}/smartsocket/stats`);
  return (await response.json()).raw;
}

function open(url, options) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, "smartsocket.v1", options);
    let answer = "";
    ws.once("upgrade", (response) => (answer = response.headers["sec-websocket-extensions"] ?? ""));
    const inbox = [];
    const waiters = [];
    ws.on("message", (data, isBinary) => {
      const message = isBinary ? data : JSON.parse(data.toString());
      const waiter = waiters.shift();
      if (waiter) waiter(message);
      else inbox.push(message);
    });
    ws.once("error", reject);
    ws.once("open", () => resolve({
      ws,
      answer: () => answer,
      next: () => (inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiters.push(r))),
    }));
  });
}

describe("permessage-deflate with the ws library", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.kill();
  });

  it("negotiates server_no_context_takeover and compresses both ways", async () => {
    const peer = await open(server.url, { perMessageDeflate: { threshold: 0 } });
    assert.match(peer.ws.extensions, /permessage-deflate/);
    assert.match(peer.answer(), /server_no_context_takeover/);
    assert.equal((await peer.next())[0], "$welcome");
    const before = await stats(server);
    peer.ws.send(JSON.stringify(["echo", { text: TEXT }, 1]));
    assert.deepEqual(await peer.next(), [1, { text: TEXT }]);
    const after = await stats(server);
    const inPayload = after.bytesIn - before.bytesIn;
    const inWire = after.bytesInWire - before.bytesInWire;
    assert.ok(inWire < inPayload / 4, `client compressed: ${inWire} on the wire for ${inPayload}`);
    assert.equal(after.compressedMessagesOut - before.compressedMessagesOut, 1);
    const outWire = after.bytesOutWire - before.bytesOutWire;
    const outPayload = after.bytesOutPayload - before.bytesOutPayload;
    assert.ok(outWire < outPayload / 4, `server compressed: ${outWire} for ${outPayload}`);
    peer.ws.close();
  });

  it("answers small messages plain (whatever the client does)", async () => {
    const peer = await open(server.url, { perMessageDeflate: true });
    await peer.next();
    const before = await stats(server);
    peer.ws.send(JSON.stringify(["echo", "tiny", 2]));
    assert.deepEqual(await peer.next(), [2, "tiny"]);
    const mid = await stats(server);
    assert.equal(mid.compressedMessagesOut, before.compressedMessagesOut);
    peer.ws.send(JSON.stringify(["echo", TEXT, 3]));
    assert.deepEqual(await peer.next(), [3, TEXT]);
    const after = await stats(server);
    assert.equal(after.compressedMessagesOut - mid.compressedMessagesOut, 1); // the big one
    peer.ws.close();
  });

  it("is off for a client that does not offer it", async () => {
    const peer = await open(server.url, { perMessageDeflate: false });
    assert.equal(peer.ws.extensions, "");
    await peer.next();
    peer.ws.send(JSON.stringify(["echo", TEXT, 4]));
    assert.deepEqual(await peer.next(), [4, TEXT]);
    peer.ws.close();
  });
});
