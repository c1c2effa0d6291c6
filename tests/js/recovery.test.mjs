// Session recovery in the JS client (protocol.md section 8): resuming after a dropped connection
// with `?resume=1` and `$resume`, exactly-once delivery of room and direct messages, idempotent
// calls kept over a drop, and nothing of it without recovery. The real server runs with
// --recovery-window; its connection is cut with the test app's `abort` (TCP abort, no close
// frame). A fake `ws` server checks the wire details and duplicate positions.
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { SmartSocket, decode, encode } from "../../js/src/smartsocket.js";
import { WebSocket, WebSocketServer, next, record, sleep, startServer, until } from "./helpers.mjs";

const RECOVERY = ["--recovery-window", "5"];
const sockets = new Set();
const servers = new Set();
const fakes = new Set();

function client(url, options = {}) {
  const socket = new SmartSocket(url, { WebSocket, reconnectDelay: 50, reconnectDelayMax: 200, ...options });
  sockets.add(socket);
  return socket;
}
async function server(args = []) {
  const s = await startServer({ app: "jsapp:create", args });
  servers.add(s);
  return s;
}

/** A WebSocket class recording the URL of every connection and every packet sent. */
function spy() {
  const urls = [];
  const sent = [];
  class Spy extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      urls.push(url);
    }
    send(data, ...rest) {
      sent.push(typeof data == "string" ? JSON.parse(data) : decode(data));
      return super.send(data, ...rest);
    }
  }
  return { Spy, urls, sent };
}

const range = (n) => Array.from({ length: n }, (_, i) => i + 1);

after(async () => {
  await Promise.all([...sockets].map((s) => s.close()));
  await Promise.all([...servers].map((s) => s.kill()));
  for (const fake of fakes) {
    for (const ws of fake.clients) ws.terminate();
    fake.close();
  }
});

describe("recovery with the real server", () => {
  it("resumes a busy room after the connection is cut mid-stream: every message once, in order", async () => {
    const srv = await server(RECOVERY);
    const { Spy, urls, sent } = spy();
    const socket = client(srv.url, { WebSocket: Spy });
    const connects = record(socket, "connect", "disconnect");
    const ticks = [];
    const dms = [];
    socket.on("tick", (n) => ticks.push(n));
    socket.on("dm", (n) => dms.push(n));
    await socket.connect();
    assert.equal(socket.welcome.recovery, 5000);
    assert.equal(socket.recovered, false);
    const sid = socket.id;
    assert.equal(await socket.call("enter", "busy"), "busy");
    const COUNT = 150;
    // The server broadcasts to the room (and sends direct messages) every 10 ms from now on.
    await socket.call("stream", { room: "busy", count: COUNT, delay: 0.01, direct: true });
    await until(() => ticks.length >= 30, 10000, "30 ticks");
    socket.send("abort"); // the server cuts TCP: no close frame
    await until(() => ticks.length >= COUNT && dms.length >= COUNT, 20000, `${COUNT} ticks and dms`);
    await sleep(100); // nothing more comes in
    assert.deepEqual(ticks, range(COUNT));
    assert.deepEqual(dms, range(COUNT));
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, sid); // the same session
    assert.deepEqual(connects.map(([event, info]) => (event == "connect" ? info : info.code)), [
      { recovered: false },
      1006,
      { recovered: true },
    ]);
    assert.equal(urls.length, 2);
    assert.doesNotMatch(urls[0], /resume/);
    assert.equal(urls[1], `${srv.url}?resume=1`);
    const resume = sent.find(([name]) => name == "$resume");
    assert.equal(resume[1].sid, sid);
    assert.equal(typeof resume[1].token, "string");
    assert.deepEqual(Object.keys(resume[1].offsets), ["busy"]);
    assert.ok(resume[1].offsets.busy[1] >= 30 && resume[1].seq >= 29);
    // still in the room: new messages keep coming
    await socket.call("stream", { room: "busy", count: 2, delay: 0 });
    await until(() => ticks.length == COUNT + 2, 5000, "two more ticks");
    assert.deepEqual(ticks.slice(COUNT), [1, 2]);
  });

  it("gets recovered: false when the history was trimmed, and forgets its positions", async () => {
    const srv = await server([...RECOVERY, "--history-size", "5"]);
    const socket = client(srv.url);
    const ticks = [];
    const dms = [];
    socket.on("tick", (n) => ticks.push(n));
    socket.on("dm", (n) => dms.push(n));
    await socket.connect();
    const sid = socket.id;
    await socket.call("enter", "r");
    await socket.call("stream", { room: "r", count: 3, delay: 0, direct: true });
    await until(() => ticks.length == 3 && dms.length == 3, 5000, "3 ticks and dms");
    const reconnected = next(socket, "connect", 10000);
    socket.send("abort", { room: "r", count: 10 }); // 10 missed, only the last 5 kept
    assert.deepEqual(await reconnected, { recovered: false });
    assert.equal(socket.recovered, false);
    assert.notEqual(socket.id, sid); // a new session, in no room
    assert.deepEqual(ticks, [1, 2, 3]);
    // The new session's direct messages count from 1 again: they must not look like duplicates.
    await socket.call("enter", "r");
    await socket.call("stream", { room: "r", count: 2, delay: 0, direct: true });
    await until(() => ticks.length == 5 && dms.length == 5, 5000, "the new session's messages");
    assert.deepEqual(ticks, [1, 2, 3, 1, 2]);
    assert.deepEqual(dms, [1, 2, 3, 1, 2]);
  });

  it("keeps a call whose reply the drop lost and sends it again: the handler runs once", async () => {
    const srv = await server(RECOVERY);
    const { Spy, sent } = spy();
    const socket = client(srv.url, { WebSocket: Spy });
    await socket.connect();
    // `slow` is still running on the server when `fast` cuts the connection; `fast` is done
    // by then, but its reply never left.
    const slow = socket.call("tally", { name: "slow", delay: 0.8 });
    const fast = socket.call("tally", { name: "fast", abort: true });
    const disconnected = next(socket, "disconnect", 5000);
    assert.equal((await disconnected).code, 1006);
    assert.deepEqual(await Promise.all([slow, fast]), [1, 1]);
    assert.equal(socket.recovered, true);
    assert.deepEqual(await socket.call("tallies"), { slow: 1, fast: 1 });
    const calls = sent.filter(([name]) => name == "tally");
    assert.equal(calls.length, 4); // each went out twice
    for (const packet of calls) assert.equal(packet[3], packet[2]); // key = ack id
    assert.deepEqual(calls.slice(2), calls.slice(0, 2)); // same ids, same keys
  });

  it("fails kept calls when reconnecting gives up, or on close()", async () => {
    const srv = await server(RECOVERY);
    // alice gives up after two attempts, 100 and 200 ms apart (at least 300 ms after the drop)
    const alice = client(srv.url, { reconnectDelay: 100, reconnectDelayMax: 200, randomizationFactor: 0, maxReconnectAttempts: 2 });
    const bob = client(srv.url, { reconnectDelay: 1000, reconnectDelayMax: 1000 });
    await alice.connect();
    await bob.connect();
    const settled = new Set();
    const call = (socket) => {
      const promise = socket.call("sleep", 5, { timeout: 20000 }).catch((err) => err);
      promise.then(() => settled.add(socket));
      return promise;
    };
    const [a, b] = [call(alice), call(bob)];
    const reconnecting = Promise.all([next(alice, "reconnecting", 5000), next(bob, "reconnecting", 5000)]);
    const failed = next(alice, "reconnect_failed", 5000);
    await srv.kill();
    await reconnecting;
    await sleep(0);
    assert.equal(settled.size, 0); // both kept for the resume
    await bob.close();
    const closed = await b;
    assert.equal(closed.code, "disconnected");
    assert.equal(closed.closeCode, 1000);
    assert.ok(!settled.has(alice));
    await failed;
    const gaveUp = await a;
    assert.equal(gaveUp.code, "disconnected");
    assert.equal(gaveUp.closeCode, 1006);
  });

  it("does not resume after close code 4008, and fails the calls that went out", async () => {
    const srv = await server(RECOVERY);
    const { Spy, urls } = spy();
    const socket = client(srv.url, { WebSocket: Spy });
    await socket.connect();
    const sid = socket.id;
    const inFlight = socket.call("sleep", 2, { timeout: 10000 }).catch((err) => err);
    await sleep(50);
    const reconnected = next(socket, "connect", 10000);
    socket.send("kick", 4008);
    const err = await inFlight;
    assert.equal(err.code, "disconnected");
    assert.equal(err.closeCode, 4008);
    assert.deepEqual(await reconnected, { recovered: false });
    assert.notEqual(socket.id, sid);
    assert.equal(urls.length, 2);
    assert.doesNotMatch(urls[1], /resume/);
  });

  it("changes nothing without recovery: no resume, no keys, calls fail on a drop", async () => {
    const srv = await server();
    const { Spy, urls, sent } = spy();
    const socket = client(srv.url, { WebSocket: Spy });
    const ticks = [];
    socket.on("tick", (n) => ticks.push(n));
    await socket.connect();
    assert.equal(socket.welcome.recovery, undefined);
    await socket.call("enter", "r");
    await socket.call("stream", { room: "r", count: 2, delay: 0 });
    await until(() => ticks.length == 2, 5000, "2 ticks");
    const inFlight = socket.call("sleep", 2, { timeout: 10000 }).catch((err) => err);
    await sleep(50);
    const reconnected = next(socket, "connect", 10000);
    socket.send("abort");
    const err = await inFlight;
    assert.equal(err.code, "disconnected");
    assert.equal(err.closeCode, 1006);
    assert.deepEqual(await reconnected, { recovered: false });
    assert.equal(socket.recovered, false);
    assert.equal(urls.length, 2);
    for (const url of urls) assert.doesNotMatch(url, /resume/);
    assert.ok(!sent.some(([name]) => name == "$resume"));
    assert.ok(sent.every((packet) => packet.length <= 3)); // no idempotency keys
    assert.deepEqual(await socket.call("tallies"), {});
  });
});

describe("recovery on the wire (fake server)", () => {
  async function fakeServer() {
    const fake = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "smartsocket.v1" });
    fakes.add(fake);
    await new Promise((resolve) => fake.once("listening", resolve));
    const conns = [];
    fake.on("connection", (ws, request) => {
      const conn = { url: request.url, ws, got: [] };
      ws.on("message", (data, binary) => conn.got.push(binary ? decode(data) : JSON.parse(String(data))));
      conn.say = (...packets) => packets.forEach((p) => ws.send(JSON.stringify(p)));
      conns.push(conn);
    });
    return { url: `ws://127.0.0.1:${fake.address().port}/`, conns };
  }
  const welcome = (extra) => ["$welcome", { protocol: 1, pingInterval: 60000, pingTimeout: 60000, recovery: 5000, ...extra }];

  it("drops seen positions, resumes with them (query kept), re-sends kept calls before the buffer, forgets them on recovered: false", async () => {
    const { url, conns } = await fakeServer();
    const socket = client(`${url}?token=abc`);
    const got = [];
    socket.on("m", (data) => got.push(data));
    socket.on("dm", (n) => got.push(`dm${n}`));
    socket.on("double", (n) => n * 2);
    const connects = record(socket, "connect");
    const connecting = socket.connect();
    await until(() => conns.length == 1, 5000, "1st connection");
    assert.equal(conns[0].url, "/?token=abc");
    conns[0].say(welcome({ sid: "s1", token: "t1" }));
    await connecting;
    conns[0].say(
      ["m", "r1", null, ["r", "e1", 1]],
      ["m", "r2", null, ["r", "e1", 2]],
      ["dm", 1, null, 1],
      ["m", "x1", null, ["x", "e9", 1]],
      ["m", "plain"], // a broadcast to everyone: no position
    );
    const kept = socket.call("c", 1);
    await until(() => got.length == 5 && conns[0].got.length == 1, 5000, "the first messages");
    const [, , id, key] = conns[0].got[0];
    assert.deepEqual(conns[0].got[0], ["c", 1, id, id]);
    assert.equal(key, id);

    conns[0].ws.terminate();
    await until(() => conns.length == 2 && conns[1].got.length == 1, 5000, "$resume");
    assert.equal(conns[1].url, "/?token=abc&resume=1");
    assert.deepEqual(conns[1].got[0], ["$resume", { sid: "s1", token: "t1", offsets: { r: ["e1", 2], x: ["e9", 1] }, seq: 1 }]);
    assert.equal(socket.connected, false);
    socket.send("later", 1); // into the offline buffer
    conns[1].say(welcome({ sid: "s1", token: "t2", recovered: true }));
    conns[1].ws.send(encode(["m", "r2", null, ["r", "e1", 2]])); // seen (MessagePack)
    conns[1].say(
      ["m", "r1", null, ["r", "e1", 1]], // seen
      ["dm", 1, null, 1], // seen
      ["m", "r3", null, ["r", "e1", 3]],
      ["dm", 2, null, 2],
      ["m", "r3", null, ["r", "e1", 3]], // seen just now
      ["m", "n1", null, ["r", "e2", 1]], // a new epoch: a new history
      ["double", 21, 7, ["r", "e2", 2]], // a position with an ack id: answered as usual
    );
    await until(() => conns[1].got.length == 4, 5000, "kept call, buffer and reply");
    assert.deepEqual(conns[1].got.slice(1), [["c", 1, id, id], ["later", 1], [7, 42]]);
    conns[1].say([id, "done"]);
    assert.equal(await kept, "done");
    assert.deepEqual(got, ["r1", "r2", "dm1", "x1", "plain", "r3", "dm2", "n1"]);
    assert.equal(socket.recovered, true);
    assert.equal(socket.id, "s1");

    conns[1].ws.terminate();
    await until(() => conns.length == 3 && conns[2].got.length == 1, 5000, "2nd $resume");
    assert.deepEqual(conns[2].got[0], ["$resume", { sid: "s1", token: "t2", offsets: { r: ["e2", 2], x: ["e9", 1] }, seq: 2 }]);
    conns[2].say(welcome({ sid: "s2", token: "t3", recovered: false }));
    conns[2].say(["dm", 1, null, 1], ["m", "again", null, ["r", "e2", 1]]);
    await until(() => got.length == 10, 5000, "the new session's messages");
    assert.deepEqual(got.slice(8), ["dm1", "again"]);
    assert.equal(socket.recovered, false);
    assert.deepEqual(connects.map(([, info]) => info.recovered), [false, true, false]);

    // a drop of the new session resumes it, from its own positions
    conns[2].ws.terminate();
    await until(() => conns.length == 4 && conns[3].got.length == 1, 5000, "3rd $resume");
    assert.deepEqual(conns[3].got[0], ["$resume", { sid: "s2", token: "t3", offsets: { r: ["e2", 1] }, seq: 1 }]);
  });

  it("$gap resets the room's positions and reaches the app: offsets seen before are new after it", async () => {
    const { url, conns } = await fakeServer();
    const socket = client(url);
    const got = [];
    const gaps = [];
    socket.on("m", (data) => got.push(data));
    socket.on("$gap", (info) => gaps.push(info));
    const connecting = socket.connect();
    await until(() => conns.length == 1, 5000, "connection");
    conns[0].say(welcome({ sid: "s1", token: "t1" }));
    await connecting;
    conns[0].say(
      ["m", "a1", null, ["r", "e1", 1]],
      ["m", "a2", null, ["r", "e1", 2]],
      ["m", "x1", null, ["x", "e1", 1]],
      ["$gap", { room: "r" }], // the broker went back: the same epoch restarts below 2
      ["m", "b1", null, ["r", "e1", 1]],
      ["m", "b2", null, ["r", "e1", 2]],
      ["m", "x1", null, ["x", "e1", 1]], // another room keeps its positions: seen
      ["m", "end"],
    );
    await until(() => got.includes("end"), 5000, "the last message");
    assert.deepEqual(got, ["a1", "a2", "x1", "b1", "b2", "end"]);
    assert.deepEqual(gaps, [{ room: "r" }]);
    conns[0].ws.terminate();
    await until(() => conns.length == 2 && conns[1].got.length == 1, 5000, "$resume");
    assert.deepEqual(conns[1].got[0], ["$resume", { sid: "s1", token: "t1", offsets: { r: ["e1", 2], x: ["e1", 1] }, seq: 0 }]);
  });

  it("sends $resume after $auth, and does not resume after close()", async () => {
    const { url, conns } = await fakeServer();
    const socket = client(url, { auth: async () => ({ token: "secret" }) });
    const connecting = socket.connect();
    await until(() => conns.length == 1 && conns[0].got.length == 1, 5000, "$auth");
    conns[0].say(welcome({ sid: "s1", token: "t1" }));
    await connecting;
    conns[0].ws.terminate();
    await until(() => conns.length == 2 && conns[1].got.length == 2, 5000, "$auth and $resume");
    assert.deepEqual(conns[1].got, [["$auth", { token: "secret" }], ["$resume", { sid: "s1", token: "t1", offsets: {}, seq: 0 }]]);
    conns[1].say(welcome({ sid: "s1", token: "t2", recovered: true }));
    await until(() => socket.connected, 5000, "resumed");
    await socket.close();
    const again = socket.connect();
    await until(() => conns.length == 3 && conns[2].got.length == 1, 5000, "a fresh connection");
    assert.equal(conns[2].url, "/");
    assert.deepEqual(conns[2].got, [["$auth", { token: "secret" }]]);
    conns[2].say(welcome({ sid: "s2", token: "t3" }));
    await again;
    assert.equal(socket.recovered, false);
  });
});
