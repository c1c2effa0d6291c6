// The JS client against the real Python server (demo app and tests/js/jsapp.py), over `ws`.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { SmartSocket, SmartSocketError } from "../../js/src/smartsocket.js";
import { WebSocket, next, record, sleep, startServer, until } from "./helpers.mjs";

const sockets = new Set();
/** A SmartSocket on `url` using `ws`, closed after the file's tests. */
function client(url, options = {}) {
  const socket = new SmartSocket(url, { WebSocket, ...options });
  sockets.add(socket);
  return socket;
}
const connected = (url, options) => client(url, options).connect();

async function rejectsWith(promise, code) {
  const err = await promise.then(
    () => assert.fail(`expected a rejection with code ${code}`),
    (e) => e,
  );
  assert.ok(err instanceof SmartSocketError, `a SmartSocketError, got ${err}`);
  assert.equal(err.code, code, err.message);
  return err;
}

after(async () => {
  await Promise.all([...sockets].map((s) => s.close()));
});

describe("with the demo app", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  it("connects and gets its $welcome", async () => {
    const socket = client(server.url);
    const events = record(socket, "connect");
    assert.equal(socket.connected, false);
    assert.equal(await socket.connect(), socket);
    assert.equal(socket.connected, true);
    assert.equal(typeof socket.id, "string");
    assert.equal(socket.welcome.protocol, 1);
    assert.equal(socket.welcome.sid, socket.id);
    assert.ok(socket.welcome.pingInterval > 0 && socket.welcome.maxMessageSize > 0);
    assert.deepEqual(events, [["connect", { recovered: false }]]); // no recovery on this server
    assert.equal(await socket.connect(), socket); // already connected: resolves at once
  });

  it("gets echo acks, with null for no data", async () => {
    const socket = await connected(server.url);
    assert.deepEqual(await socket.call("echo", { a: [1, "two", null], b: 1.5 }), { a: [1, "two", null], b: 1.5 });
    assert.equal(await socket.call("echo"), null);
    assert.equal(await socket.call("echo", "é ✓ 𝄞"), "é ✓ 𝄞");
    const many = await Promise.all(Array.from({ length: 50 }, (_, i) => socket.call("echo", i)));
    assert.deepEqual(many, Array.from({ length: 50 }, (_, i) => i));
  });

  it("chats between two clients in a room", async () => {
    const alice = await connected(server.url);
    const bob = await connected(server.url);
    assert.deepEqual(await alice.call("join", { room: "lobby" }), { room: "lobby", members: 1 });
    assert.deepEqual(await bob.call("join", { room: "lobby" }), { room: "lobby", members: 2 });
    const got = next(bob, "chat");
    assert.deepEqual(await alice.call("chat", { room: "lobby", text: "hi bob" }), { delivered: 1 });
    const message = await got;
    assert.equal(message.room, "lobby");
    assert.equal(message.text, "hi bob");
    assert.equal(message.from, alice.id);
    assert.equal(typeof message.timestamp, "number");
    // fire-and-forget chat arrives too
    const again = next(bob, "chat");
    alice.send("chat", { room: "lobby", text: "and again" });
    assert.equal((await again).text, "and again");
    assert.deepEqual(await bob.call("leave", { room: "lobby" }), { room: "lobby" });
    assert.deepEqual(await alice.call("chat", { room: "lobby", text: "alone" }), { delivered: 0 });
  });

  it("rejects ack errors with their code", async () => {
    const socket = await connected(server.url);
    const err = await rejectsWith(socket.call("chat", { room: "nowhere", text: "hi" }), "not_in_room");
    assert.match(err.message, /nowhere/);
    await rejectsWith(socket.call("join", { room: 5 }), "invalid_payload");
    await rejectsWith(socket.call("no-such-event", 1), "unknown_event");
    assert.ok(socket.connected); // errors leave the connection open
  });

  it("emits 'error' for a $error (a refused event without an ack)", async () => {
    const socket = await connected(server.url);
    const error = next(socket, "error");
    socket.send("join", { room: 5 });
    const info = await error;
    assert.equal(info.code, "invalid_payload");
    assert.equal(info.event, "join");
  });

  it("refuses reserved event names locally", async () => {
    const socket = await connected(server.url);
    for (const name of ["$ping", "$welcome", "connect", "disconnect", "error"]) {
      assert.throws(() => socket.send(name, 1), (e) => e.code === "reserved_event");
      await rejectsWith(socket.call(name, 1), "reserved_event");
    }
    assert.throws(() => socket.send("", 1), TypeError);
  });

  it("sends binary payloads as MessagePack: bytes come back as Uint8Array", async () => {
    const socket = await connected(server.url);
    const bytes = new Uint8Array(256).map((_, i) => i);
    const top = await socket.call("echo", bytes);
    assert.ok(top instanceof Uint8Array);
    assert.deepEqual(top, bytes);
    const nested = await socket.call("echo", { name: "file.bin", file: bytes.buffer, size: 256 });
    assert.equal(nested.name, "file.bin");
    assert.ok(nested.file instanceof Uint8Array);
    assert.deepEqual(nested.file, bytes);
    const big = new Uint8Array(300_000).map((_, i) => (i * 31) & 255);
    assert.deepEqual(await socket.call("echo", [big]), [big]);
    // forced binary frame without bytes, and a binary chat between two clients
    assert.deepEqual(await socket.call("echo", { n: 2 ** 40, f: 0.5 }, { binary: true }), { n: 2 ** 40, f: 0.5 });
    const peer = await connected(server.url);
    await socket.call("join", { room: "bin" });
    await peer.call("join", { room: "bin" });
    const got = next(peer, "chat");
    await socket.call("chat", { room: "bin", text: "msgpack text" }, { binary: true });
    assert.equal((await got).text, "msgpack text");
  });

  it("measures ping round trips", async () => {
    const socket = await connected(server.url);
    const rtt = await socket.ping();
    assert.ok(rtt >= 0 && rtt < 1000, `rtt ${rtt}`);
    assert.equal(socket.latency, rtt);
  });

  it("refuses a message over the server's maxMessageSize before sending it", async () => {
    const socket = await connected(server.url);
    const max = socket.welcome.maxMessageSize;
    assert.throws(() => socket.send("echo", "x".repeat(max)), (e) => e.code === "message_too_big");
    assert.throws(() => socket.send("echo", "é".repeat(max / 2)), (e) => e.code === "message_too_big");
    await rejectsWith(socket.call("echo", new Uint8Array(max)), "message_too_big");
    assert.equal((await socket.call("echo", "x".repeat(max - 100))).length, max - 100);
    assert.ok(socket.connected);
  });

  it("closes for good with close(): no reconnect, sends refused", async () => {
    const socket = await connected(server.url);
    const events = record(socket, "disconnect", "reconnecting");
    const pending = socket.call("echo", 1, { timeout: 5000 }).catch((e) => e);
    await socket.close();
    assert.equal(socket.connected, false);
    assert.deepEqual(events, [["disconnect", { code: 1000, reason: "client closed" }]]);
    const err = await pending;
    assert.ok(err.code === "disconnected" || err === 1); // the echo may have beaten the close
    assert.throws(() => socket.send("echo", 1), (e) => e.code === "closed");
    await sleep(100);
    assert.equal(events.length, 1);
    // and it can connect again
    await socket.connect();
    assert.equal(await socket.call("echo", "back"), "back");
  });

  it("rejects connect() when nothing listens, and times out without $welcome", async () => {
    const socket = client("ws://127.0.0.1:9/");
    await rejectsWith(socket.connect(), "connect_failed");
    assert.equal(socket.connected, false);
  });

  it("runs the built files: client.mjs (ESM) and client.js (classic script)", async () => {
    const { readFileSync } = await import("node:fs");
    const vm = await import("node:vm");
    const { join } = await import("node:path");
    const { ROOT } = await import("./helpers.mjs");
    const esm = await import(join(ROOT, "src", "smartsocket", "static", "client.mjs"));
    assert.equal(esm.default, esm.SmartSocket);
    const viaEsm = new esm.SmartSocket(server.url, { WebSocket });
    sockets.add(viaEsm);
    await viaEsm.connect();
    assert.deepEqual(await viaEsm.call("echo", { bytes: new Uint8Array([1, 2]) }), { bytes: new Uint8Array([1, 2]) });
    // The classic build defines a global SmartSocket (the class) in a browser-like context.
    const code = readFileSync(join(ROOT, "src", "smartsocket", "static", "client.js"), "utf8");
    const context = vm.createContext({ TextEncoder, TextDecoder, setTimeout, clearTimeout, performance, console, ArrayBuffer, Uint8Array, DataView });
    vm.runInContext(code, context);
    assert.equal(typeof context.SmartSocket, "function");
    assert.equal(context.SmartSocket.name, "SmartSocket");
    assert.equal(typeof context.SmartSocket.msgpack.encode, "function");
    const viaClassic = new context.SmartSocket(server.url, { WebSocket });
    sockets.add(viaClassic);
    await viaClassic.connect();
    assert.equal(await viaClassic.call("echo", "classic"), "classic");
  });

  it("needs a URL outside a web page, and checks its options", () => {
    assert.throws(() => new SmartSocket(), /needs a URL/);
    assert.throws(() => new SmartSocket(server.url, { reconnectDelay: 0 }), RangeError);
    assert.throws(() => new SmartSocket(server.url, { randomizationFactor: 1 }), RangeError);
    assert.equal(new SmartSocket("http://127.0.0.1:1/x", { WebSocket }).url, "ws://127.0.0.1:1/x");
  });
});

describe("with the test app (server-to-client calls and more)", () => {
  let server;
  before(async () => {
    server = await startServer({ app: "jsapp:create" });
  });
  after(() => server.stop());

  it("answers server calls with a handler's return value or resolved Promise", async () => {
    const socket = await connected(server.url);
    socket.on("add", ({ a, b }) => a + b);
    socket.on("later", (data) => new Promise((resolve) => setTimeout(() => resolve({ later: data }), 20)));
    socket.on("nothing", () => undefined);
    assert.deepEqual(await socket.call("ask", { event: "add", data: { a: 2, b: 3 } }), { result: 5 });
    assert.deepEqual(await socket.call("ask", { event: "later", data: "x" }), { result: { later: "x" } });
    assert.deepEqual(await socket.call("ask", { event: "nothing" }), { result: null });
    // only the first handler answers; the others still run
    let seen = 0;
    socket.on("add", () => (seen++, "ignored"));
    assert.deepEqual(await socket.call("ask", { event: "add", data: { a: 1, b: 1 } }), { result: 2 });
    assert.equal(seen, 1);
  });

  it("turns thrown errors and rejections into ack errors", async () => {
    const socket = await connected(server.url);
    socket.on("coded", () => {
      throw Object.assign(new Error("no such user"), { code: "not_found" });
    });
    socket.on("plain", () => {
      throw new Error("boom");
    });
    socket.on("rejects", () => Promise.reject(Object.assign(new Error("later boom"), { code: "busy" })));
    const ask = (event) => socket.call("ask", { event, data: null });
    assert.deepEqual(await ask("coded"), { error: { code: "not_found", message: "no such user" } });
    assert.deepEqual(await ask("plain"), { error: { code: "client_error", message: "boom" } });
    assert.deepEqual(await ask("rejects"), { error: { code: "busy", message: "later boom" } });
    assert.deepEqual((await ask("unhandled")).error.code, "unknown_event");
    socket.on("slow", () => new Promise(() => {}));
    assert.deepEqual(await socket.call("ask", { event: "slow", timeout: 0.1 }), { error: { code: "timeout", message: "no reply" } });
  });

  it("answers binary server calls in binary", async () => {
    const socket = await connected(server.url);
    socket.on("reverse", (data) => {
      assert.ok(data.bytes instanceof Uint8Array);
      return { bytes: data.bytes.slice().reverse() };
    });
    // The bytes are two levels down: binary: true makes this a MessagePack frame (as in Python).
    const reply = await socket.call("ask", { event: "reverse", data: { bytes: new Uint8Array([1, 2, 3]) } }, { binary: true });
    assert.deepEqual(reply, { result: { bytes: new Uint8Array([3, 2, 1]) } });
  });

  it("removes handlers with off() and handles once()", async () => {
    const socket = await connected(server.url);
    const handler = () => "first";
    socket.on("which", handler);
    assert.deepEqual(await socket.call("ask", { event: "which" }), { result: "first" });
    socket.off("which", handler);
    assert.equal((await socket.call("ask", { event: "which" })).error.code, "unknown_event");
    socket.once("which", () => "once");
    assert.deepEqual(await socket.call("ask", { event: "which" }), { result: "once" });
    assert.equal((await socket.call("ask", { event: "which" })).error.code, "unknown_event");
  });

  it("times out calls", async () => {
    const socket = await connected(server.url);
    // The reply comes after 1 s: a "timeout" rejection can only be the 100 ms timer's.
    const err = await rejectsWith(socket.call("sleep", 1, { timeout: 100 }), "timeout");
    assert.match(err.message, /sleep/);
    assert.equal(await socket.call("sleep", 0.01, { timeout: 2000 }), 0.01);
    const fast = client(server.url, { ackTimeout: 50 });
    await fast.connect();
    await rejectsWith(fast.call("sleep", 0.5), "timeout");
  });

  it("does not reconnect after close code 4000 (kicked)", async () => {
    const socket = await connected(server.url, { reconnectDelay: 20 });
    const events = record(socket, "disconnect", "reconnecting");
    socket.send("kick", 4000);
    await until(() => events.length, 3000, "disconnect");
    await sleep(200);
    assert.deepEqual(events, [["disconnect", { code: 4000, reason: "kicked by the test" }]]);
    assert.equal(socket.connected, false);
  });

  it("reconnects after close code 1011", async () => {
    const socket = await connected(server.url, { reconnectDelay: 20 });
    const first = socket.id;
    const events = record(socket, "disconnect", "reconnecting", "connect");
    socket.send("kick", 1011);
    await until(() => events.some(([e]) => e === "connect"), 3000, "reconnect");
    assert.deepEqual(events.map(([e]) => e), ["disconnect", "reconnecting", "connect"]);
    assert.equal(events[0][1].code, 1011);
    assert.equal(events[1][1], 1);
    assert.notEqual(socket.id, first);
  });
});

describe("authentication", () => {
  let server;
  before(async () => {
    server = await startServer({ args: ["--api-keys", "k-one,k-two", "--auth-timeout", "2"] });
  });
  after(() => server.stop());

  it("sends options.auth as $auth on every connection", async () => {
    const socket = await connected(server.url, { auth: { token: "k-one" } });
    assert.equal(await socket.call("echo", "authed"), "authed");
    const lazy = await connected(server.url, { auth: () => Promise.resolve({ token: "k-two" }) });
    assert.equal(await lazy.call("echo", 2), 2);
  });

  it("fails to connect with a wrong token (4001) or a token in the URL", async () => {
    const err = await rejectsWith(client(server.url, { auth: { token: "wrong" } }).connect(), "unauthorized");
    assert.equal(err.closeCode, 4001);
    const broken = client(server.url, { auth: () => Promise.reject(new Error("vault locked")) });
    const failed = await rejectsWith(broken.connect(), "connect_failed");
    assert.match(failed.closeReason, /no credentials: vault locked/);
    const viaQuery = await connected(server.url + "?token=k-two");
    assert.equal(await viaQuery.call("echo", 3), 3);
  });

  it("without credentials, rejects at once with auth_required and does not reconnect", async () => {
    const socket = client(server.url, { reconnectDelay: 10, reconnectDelayMax: 20 });
    const attempts = record(socket, "reconnecting");
    // auth_required, not the "unauthorized" (4001) of the server's auth_timeout: it did not wait
    const err = await rejectsWith(socket.connect(), "auth_required");
    assert.match(err.message, /requires authentication/);
    assert.equal(err.closeCode, 1000);
    await sleep(100);
    assert.deepEqual(attempts, []);
    assert.equal(socket.connected, false);
  });

  it("does not reconnect after 4001", async () => {
    const socket = client(server.url, { auth: { token: "wrong" }, reconnectDelay: 10, reconnectDelayMax: 20 });
    const attempts = record(socket, "reconnecting");
    await rejectsWith(socket.connect(), "unauthorized");
    await sleep(100);
    assert.deepEqual(attempts, []);
  });
});
