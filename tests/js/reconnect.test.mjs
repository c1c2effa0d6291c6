// Reconnect, offline buffer, backoff and heartbeat of the JS client: the real server is killed
// and restarted on the same port; a fake `ws` server plays a server that goes silent.
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { SmartSocket } from "../../js/src/smartsocket.js";
import { WebSocket, WebSocketServer, next, record, sleep, startServer, until, within } from "./helpers.mjs";

const sockets = new Set();
// No cap on the attempts (maxReconnectAttempts: null) unless a test sets one: with these short
// delays the default 10 attempts last about 2 s, less than a server takes to start on a loaded
// machine; the client would give up (reconnect_failed) before the restarted server listens.
function client(url, options = {}) {
  const socket = new SmartSocket(url, { WebSocket, reconnectDelay: 50, reconnectDelayMax: 200, maxReconnectAttempts: null, ...options });
  sockets.add(socket);
  return socket;
}
const servers = new Set();
async function server(options) {
  const s = await startServer(options);
  servers.add(s);
  return s;
}

after(async () => {
  await Promise.all([...sockets].map((s) => s.close()));
  await Promise.all([...servers].map((s) => s.kill()));
});

describe("reconnect", () => {
  it("reconnects after the server is killed and restarted on the same port, then flushes the offline buffer in order", async () => {
    const first = await server({ app: "jsapp:create" });
    const alice = client(first.url);
    const bob = client(first.url);
    // Rooms live on the server: rejoin on every (re)connect.
    for (const s of [alice, bob]) s.on("connect", () => s.call("join", { room: "r" }).catch(() => {}));
    // 'connect' handlers send before the offline buffer is flushed
    alice.on("connect", () => alice.send("record", "from the connect handler"));
    const events = record(alice, "connect", "disconnect", "reconnecting", "reconnect_failed");
    await alice.connect();
    await bob.connect();
    const firstSid = alice.id;
    const inFlight = alice.call("sleep", 5, { timeout: 10000 }).catch((e) => e);

    await first.kill();
    const gone = await until(() => events.find(([e]) => e === "disconnect"), 5000, "disconnect");
    assert.equal(gone[1].code, 1006);
    assert.equal((await inFlight).code, "disconnected"); // it went out, then the link died
    await until(() => events.find(([e]) => e === "reconnecting"), 5000, "reconnecting");
    assert.equal(alice.connected, false);

    for (let i = 0; i < 5; i++) alice.send("record", i);
    // No ack timeout: they wait in the offline buffer for as long as the server takes to start
    // (the bounds below count from when it listens).
    const whileDown = alice.call("echo", "called while down", { timeout: 0 });
    const chatWhileDown = alice.call("chat", { room: "r", text: "queued" }, { timeout: 0 });
    alice.send("record", "last");
    await sleep(300); // a few failed attempts (connection refused) while the server is down

    const connects = () => events.filter(([e]) => e === "connect").length;
    const second = await server({ app: "jsapp:create", port: first.port });
    assert.equal(second.port, first.port);
    await until(() => connects() === 2, 10000, "alice reconnected");
    assert.equal(await within(whileDown, 10000, "the call made while down"), "called while down");
    assert.notEqual(alice.id, firstSid);
    assert.deepEqual(await alice.call("records"), ["from the connect handler", 0, 1, 2, 3, 4, "last"]);
    // the room was joined again before the queued chat went out: no not_in_room
    assert.equal(typeof (await within(chatWhileDown, 10000, "the chat queued while down")).delivered, "number");

    // both reconnected and rejoined: they keep chatting
    await until(() => bob.connected, 5000, "bob reconnected");
    await until(async () => (await alice.call("join", { room: "r" })).members === 2, 5000, "both in the room");
    const got = next(bob, "chat");
    assert.deepEqual(await alice.call("chat", { room: "r", text: "still here" }), { delivered: 1 });
    assert.equal((await got).text, "still here");
    const names = events.map(([e]) => e);
    assert.equal(names[0], "connect");
    assert.equal(names[1], "disconnect");
    assert.equal(names.at(-1), "connect");
    assert.ok(!names.includes("reconnect_failed"));
    const attempts = events.filter(([e]) => e === "reconnecting").map(([, n]) => n);
    assert.deepEqual(attempts, attempts.map((_, i) => i + 1));
  });

  it("reconnects after a graceful shutdown (1001)", async () => {
    const first = await server();
    const socket = client(first.url);
    await socket.connect();
    const disconnected = next(socket, "disconnect");
    await first.stop();
    assert.equal((await disconnected).code, 1001);
    // Recorded from now: the client may connect before startServer sees the "listening" line.
    const connects = record(socket, "connect");
    await server({ port: first.port });
    await until(() => connects.length, 10000, "connect");
    assert.equal(await socket.call("echo", "after 1001"), "after 1001");
  });

  it("bounds the offline buffer", async () => {
    const socket = client("ws://127.0.0.1:9/", { maxBuffered: 3 });
    socket.send("echo", 1).send("echo", 2).send("echo", 3);
    assert.throws(() => socket.send("echo", 4), (e) => e.code === "offline_buffer_full" && /3 messages/.test(e.message));
    await assert.rejects(socket.call("echo", 5), (e) => e.code === "offline_buffer_full");
  });

  it("drops a call that timed out while waiting in the offline buffer", async () => {
    const first = await server({ app: "jsapp:create" });
    const socket = client(first.url);
    await socket.connect();
    await first.kill();
    await next(socket, "reconnecting");
    await assert.rejects(socket.call("record", "expired", { timeout: 50 }), (e) => e.code === "timeout");
    socket.send("record", "kept");
    const connects = record(socket, "connect");
    await server({ app: "jsapp:create", port: first.port });
    await until(() => connects.length, 10000, "connect");
    assert.deepEqual(await socket.call("records"), ["kept"]);
  });

  it("gives up after maxReconnectAttempts with reconnect_failed", async () => {
    const first = await server();
    const socket = client(first.url, { reconnectDelay: 20, reconnectDelayMax: 40, maxReconnectAttempts: 3 });
    const events = record(socket, "reconnecting", "reconnect_failed");
    await socket.connect();
    const failed = next(socket, "reconnect_failed", 5000);
    await first.kill();
    await failed;
    assert.deepEqual(events, [["reconnecting", 1], ["reconnecting", 2], ["reconnecting", 3], ["reconnect_failed", undefined]]);
    await sleep(150);
    assert.equal(events.length, 4); // no more attempts
    // connect() still works by hand later
    await server({ port: first.port });
    await socket.connect();
    assert.equal(await socket.call("echo", 1), 1);
  });

  it("does not reconnect when reconnect is false", async () => {
    const first = await server();
    const socket = client(first.url, { reconnect: false });
    const events = record(socket, "disconnect", "reconnecting");
    await socket.connect();
    await first.kill();
    await until(() => events.length, 5000, "disconnect");
    await sleep(150);
    assert.deepEqual(events.map(([e]) => e), ["disconnect"]);
  });

  it("backs off exponentially up to reconnectDelayMax, with jitter", async () => {
    // Nothing listens after the first connection: every attempt fails, up to the limit.
    const fake = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "smartsocket.v1" });
    await new Promise((resolve) => fake.once("listening", resolve));
    const { port } = fake.address();
    fake.on("connection", (ws) => ws.send(JSON.stringify(["$welcome", { sid: "s1", pingInterval: 60000, pingTimeout: 60000 }])));
    const socket = client(`ws://127.0.0.1:${port}/`, { reconnectDelay: 40, reconnectDelayMax: 160, randomizationFactor: 0, maxReconnectAttempts: 5 });
    const attempts = [];
    socket.on("reconnecting", (attempt) => attempts.push(attempt));
    await socket.connect();
    for (const ws of fake.clients) ws.terminate();
    await new Promise((resolve) => fake.close(resolve));
    await next(socket, "reconnect_failed", 5000);
    assert.deepEqual(attempts, [1, 2, 3, 4, 5]);

    // The delays the client asks for (read from its timer requests, not from the clock: a
    // loaded machine fires timers late or early by a few ms): min(max, delay * 2^(n-1)).
    const paced = client("ws://127.0.0.1:9/", { reconnectDelay: 40, reconnectDelayMax: 160, randomizationFactor: 0 });
    const asked = [];
    const setTimeoutBefore = globalThis.setTimeout;
    globalThis.setTimeout = (fn, ms) => (asked.push(ms), setTimeoutBefore(() => {}, 0));
    try {
      for (let i = 0; i < 5; i++) {
        paced._timer = null;
        paced._reconnect();
      }
    } finally {
      globalThis.setTimeout = setTimeoutBefore;
      paced._timer = null;
    }
    assert.deepEqual(asked, [40, 80, 160, 160, 160]);

    // with jitter the delays spread within +/- randomizationFactor
    const jittery = client("ws://127.0.0.1:9/", { reconnectDelay: 1000, reconnectDelayMax: 30000, randomizationFactor: 0.5 });
    const delays = [];
    const realSetTimeout = globalThis.setTimeout;
    globalThis.setTimeout = (fn, ms) => (delays.push(ms), realSetTimeout(() => {}, 0));
    try {
      for (let i = 0; i < 200; i++) {
        jittery._attempt = 0;
        jittery._timer = null;
        jittery._reconnect();
      }
    } finally {
      globalThis.setTimeout = realSetTimeout;
      jittery._timer = null;
    }
    assert.ok(delays.every((d) => d >= 500 && d <= 1500), "within 1000 +/- 50%");
    assert.ok(Math.max(...delays) - Math.min(...delays) > 500, "really spread");
  });
});

describe("heartbeat", () => {
  it("answers the server's $ping with $pong", async () => {
    const s = await server({ args: ["--ping-interval", "0.1", "--ping-timeout", "0.2"] });
    const socket = client(s.url);
    const events = record(socket, "disconnect");
    await socket.connect();
    await sleep(700); // several heartbeats: without $pong the server would close with 4002
    assert.equal(socket.connected, true);
    assert.deepEqual(events, []);
    const stats = await (await fetch(`${s.http}/smartsocket/stats`)).json();
    // the server measured the round trips of our $pongs
    assert.ok(stats.raw.latencySamples >= 2, `latency samples: ${stats.raw.latencySamples}`);
  });

  it("treats pingInterval + pingTimeout of silence as a dead server and reconnects", async () => {
    // A fake server: welcomes with a tiny heartbeat, then never says anything again.
    const fake = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "smartsocket.v1" });
    await new Promise((resolve) => fake.once("listening", resolve));
    let connections = 0;
    fake.on("connection", (ws) => {
      connections++;
      ws.send(JSON.stringify(["$welcome", { sid: `silent-${connections}`, protocol: 1, pingInterval: 100, pingTimeout: 100, maxMessageSize: 1 << 20, ackTimeout: 30000 }]));
    });
    const socket = client(`ws://127.0.0.1:${fake.address().port}/`, { reconnectDelay: 20, reconnectDelayMax: 20 });
    const events = record(socket, "connect", "disconnect", "reconnecting");
    const started = performance.now();
    await socket.connect();
    assert.equal(socket.id, "silent-1");
    const disconnect = await next(socket, "disconnect", 3000);
    const silentFor = performance.now() - started;
    assert.deepEqual(disconnect, { code: 1006, reason: "heartbeat timeout" });
    // Not before pingInterval + pingTimeout of silence (how much later depends on the machine).
    assert.ok(silentFor >= 195, `dropped after ${silentFor} ms`);
    await until(() => socket.id === "silent-2", 3000, "reconnected to the fake server");
    assert.deepEqual(events.slice(0, 4).map(([e]) => e), ["connect", "disconnect", "reconnecting", "connect"]);
    await socket.close();
    for (const ws of fake.clients) ws.terminate();
    await new Promise((resolve) => fake.close(resolve));
  });

  it("keeps a connection that only receives traffic (no pings) alive while messages flow", async () => {
    const fake = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "smartsocket.v1" });
    await new Promise((resolve) => fake.once("listening", resolve));
    let timer;
    fake.on("connection", (ws) => {
      ws.send(JSON.stringify(["$welcome", { sid: "chatty", pingInterval: 100, pingTimeout: 100 }]));
      timer = setInterval(() => ws.send(JSON.stringify(["tick", 1])), 50);
    });
    const socket = client(`ws://127.0.0.1:${fake.address().port}/`);
    socket.on("tick", () => {});
    const events = record(socket, "disconnect");
    await socket.connect();
    await sleep(500);
    clearInterval(timer);
    assert.deepEqual(events, []);
    await socket.close();
    for (const ws of fake.clients) ws.terminate();
    await new Promise((resolve) => fake.close(resolve));
  });
});
