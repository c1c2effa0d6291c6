// socket.io-client (npm, 4.8) in Node against the real Python server: the Socket.IO endpoint
// serves it unchanged, beside native SmartSocket clients on the same app and rooms.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { SmartSocket } from "../../js/src/smartsocket.js";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { ROOT, WebSocket, requireFromJs, startServer, until } from "./helpers.mjs";

const { io } = requireFromJs("socket.io-client");

const clients = new Set();
/** A Socket.IO client (WebSocket only unless `transports` says otherwise). */
function sio(server, options = {}) {
  const socket = io(server.http, { transports: ["websocket"], reconnection: false, ...options });
  clients.add(socket);
  return socket;
}
const connectedSio = (server, options) =>
  new Promise((resolve, reject) => {
    const socket = sio(server, options);
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
const once = (socket, event, ms = 5000) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });

after(() => {
  for (const socket of clients) socket.disconnect();
});

describe("socket.io-client against the Socket.IO endpoint", () => {
  let server;
  before(async () => {
    server = await startServer({ app: "jsapp:socketio_app" });
  });
  after(() => server.stop());

  it("connects over WebSocket and gets the socket id as its sid", async () => {
    const socket = await connectedSio(server);
    assert.equal(typeof socket.id, "string");
    assert.equal(socket.io.engine.transport.name, "websocket");
  });

  it("emits with an ack into the same handlers as native clients", async () => {
    const socket = await connectedSio(server);
    assert.deepEqual(await socket.emitWithAck("echo", { a: [1, 2] }), { a: [1, 2] });
    const native = await new SmartSocket(server.url, { WebSocket }).connect();
    assert.deepEqual(await native.call("echo", { a: [1, 2] }), { a: [1, 2] });
    native.close();
  });

  it("sends and answers several arguments", async () => {
    const socket = await connectedSio(server);
    const answer = await new Promise((resolve) => socket.emit("move", 1, "two", (...args) => resolve(args)));
    assert.deepEqual(answer, ["two", 1]);
  });

  it("answers the server's calls through its ack", async () => {
    const socket = await connectedSio(server);
    socket.on("question", (data, ack) => ack({ answer: data.n * 2 }));
    const reply = await socket.emitWithAck("ask", { event: "question", data: { n: 21 } });
    assert.deepEqual(reply, { result: { answer: 42 } });
  });

  it("carries binary payloads both ways", async () => {
    const socket = await connectedSio(server);
    const reply = await socket.emitWithAck("blob", Buffer.from([1, 2, 3]));
    assert.deepEqual([...reply.got], [1, 2, 3]);
    assert.deepEqual([...reply.extra], [0, 255]);
  });

  it("shares rooms with a native client: one broadcast reaches both", async () => {
    const socket = await connectedSio(server);
    const native = await new SmartSocket(server.url, { WebSocket }).connect();
    await socket.emitWithAck("enter", "mixed");
    await native.call("enter", "mixed");
    const nativeGot = new Promise((resolve) => native.on("shouted", resolve));
    const sioGot = once(socket, "shouted");
    assert.equal(await native.call("shout", { room: "mixed", text: "hi all" }), 2);
    assert.deepEqual(await sioGot, ["hi all"]);
    assert.equal(await nativeGot, "hi all");
    native.close();
  });

  it("joins a namespace of the application's own, beside the main one", async () => {
    const main = await connectedSio(server);
    const admin = main.io.socket("/admin"); // the same connection, another namespace
    clients.add(admin);
    await once(admin, "connect");
    const answer = await new Promise((resolve) => admin.emit("who", (...args) => resolve(args)));
    assert.deepEqual(answer, ["admin", admin.id]);
    assert.notEqual(admin.id, main.id);
    const [err] = await admin.emitWithAck("echo", 1).then((r) => [r]);
    assert.equal(err.error.code, "unknown_event"); // the app's handlers are not the namespace's
  });

  it("is refused on an unknown namespace", async () => {
    const socket = io(`${server.http}/nope`, { transports: ["websocket"], reconnection: false });
    clients.add(socket);
    const [err] = await once(socket, "connect_error");
    assert.equal(err.message, "Invalid namespace");
  });

  it("is disconnected by the server and told why", async () => {
    const socket = await connectedSio(server);
    const gone = once(socket, "disconnect");
    socket.emit("kick", 4000);
    assert.deepEqual((await gone)[0], "io server disconnect");
  });
});

describe("socket.io-client with API keys", () => {
  let server;
  before(async () => {
    server = await startServer({ app: "jsapp:socketio_app", args: ["--api-keys", "k1"] });
  });
  after(() => server.stop());

  it("connects with the key in its auth payload", async () => {
    const socket = await connectedSio(server, { auth: { token: "k1" } });
    assert.deepEqual(await socket.emitWithAck("echo", 1), 1);
  });

  it("gets a connect_error without a valid key", async () => {
    const socket = sio(server, { auth: { token: "wrong" } });
    const [err] = await once(socket, "connect_error");
    assert.equal(err.message, "unauthorized");
  });
});

describe("socket.io-client over HTTP long-polling", () => {
  let server;
  before(async () => {
    server = await startServer({ app: "jsapp:socketio_app" });
  });
  after(() => server.stop());

  it("starts on polling and upgrades to WebSocket (default transports)", async () => {
    const socket = io(server.http, { reconnection: false });
    clients.add(socket);
    const upgraded = once(socket.io.engine, "upgrade");
    await once(socket, "connect");
    assert.deepEqual(await socket.emitWithAck("echo", { n: 1 }), { n: 1 });
    await upgraded;
    assert.equal(socket.io.engine.transport.name, "websocket");
    assert.deepEqual(await socket.emitWithAck("move", 1, 2), 2);
  });

  it("works with polling only: events, acks, binary, broadcasts", async () => {
    const socket = await connectedSio(server, { transports: ["polling"] });
    assert.equal(socket.io.engine.transport.name, "polling");
    assert.deepEqual(await socket.emitWithAck("echo", "hi"), "hi");
    const reply = await socket.emitWithAck("blob", Buffer.from([7]));
    assert.deepEqual([...reply.got], [7]);
    await socket.emitWithAck("enter", "polled");
    const got = once(socket, "shouted");
    assert.equal(await socket.emitWithAck("shout", { room: "polled", text: "yo" }), 1);
    assert.deepEqual(await got, ["yo"]);
    socket.on("question", (data, ack) => ack(data.n + 1));
    assert.deepEqual(await socket.emitWithAck("ask", { event: "question", data: { n: 1 } }), { result: 2 });
  });
});

describe("socket.io-client across a server restart", () => {
  it("reconnects by itself to the restarted server on the same port", async () => {
    let server = await startServer({ app: "jsapp:socketio_app" });
    const socket = io(server.http, { transports: ["websocket"], reconnectionDelay: 50, reconnectionDelayMax: 200 });
    clients.add(socket);
    await once(socket, "connect");
    const firstId = socket.id;
    const dropped = once(socket, "disconnect");
    await server.stop(); // graceful: 1001, the client reconnects
    assert.equal((await dropped)[0], "transport close");
    // Counted from now: the client may connect before startServer reads the "listening" line.
    let connects = 0;
    socket.on("connect", () => connects++);
    server = await startServer({ app: "jsapp:socketio_app", port: server.port });
    try {
      await until(() => connects > 0, 10000, "connect");
      assert.notEqual(socket.id, firstId);
      assert.deepEqual(await socket.emitWithAck("echo", "again"), "again");
    } finally {
      socket.disconnect();
      await server.stop();
    }
  });
});

describe("socket.io-client connection-state recovery (pid and offset)", () => {
  const RECOVERY = ["--recovery-window", "10"];
  const sioClient = (server) => {
    const socket = io(server.http, { transports: ["websocket"], reconnectionDelay: 50, reconnectionDelayMax: 200 });
    clients.add(socket);
    return socket;
  };
  /** Collects one event's arguments as they arrive. */
  const collect = (socket, event) => {
    const got = [];
    socket.on(event, (...args) => got.push(args));
    return got;
  };
  const until = async (check, ms = 10000) => {
    const end = Date.now() + ms;
    while (!check()) {
      if (Date.now() > end) throw new Error("condition not met in time");
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  /** Cut `socket`'s transport, broadcast `texts` to `room` meanwhile, and wait for the
   * reconnection (to `next` if given: another node). */
  async function cutAndResume(socket, shouter, room, texts, next = null) {
    const dropped = once(socket, "disconnect");
    if (next) socket.io.uri = next.http; // the next connection goes to the other node
    // No automatic reconnect until the shouts are out: they are surely missed, and the 'connect'
    // cannot come before we wait for it (both raced the 50 ms reconnection delay before).
    socket.io.reconnection(false);
    socket.io.engine.close(); // the transport ends without a DISCONNECT: the session is kept
    await dropped;
    for (const text of texts) await shouter.emitWithAck("shout", { room, text });
    assert.equal(socket.connected, false);
    socket.io.reconnection(true);
    const back = once(socket, "connect", 10000);
    socket.connect(); // with its pid and offset
    await back;
  }

  it("gets what it missed, with socket.recovered, on one node", async () => {
    const server = await startServer({ app: "jsapp:socketio_app", args: RECOVERY });
    try {
      const socket = sioClient(server);
      await once(socket, "connect");
      assert.equal(socket.recovered, false);
      const firstId = socket.id;
      const got = collect(socket, "shouted");
      await socket.emitWithAck("enter", "rec");
      const shouter = await connectedSio(server);
      await shouter.emitWithAck("shout", { room: "rec", text: "one" });
      await until(() => got.length === 1);
      assert.equal(got[0][0], "one");
      assert.equal(typeof got[0][1], "string"); // the offset, the last argument

      await cutAndResume(socket, shouter, "rec", ["two", "three"]);
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, firstId);
      await until(() => got.length === 3);
      assert.deepEqual(got.map((args) => args[0]), ["one", "two", "three"]);
      // Back in the room: live messages follow, and a second cut resumes again.
      await shouter.emitWithAck("shout", { room: "rec", text: "four" });
      await until(() => got.length === 4);
      await cutAndResume(socket, shouter, "rec", ["five"]);
      assert.equal(socket.recovered, true);
      await until(() => got.length === 5);
      assert.deepEqual(got.map((args) => args[0]), ["one", "two", "three", "four", "five"]);
      socket.disconnect();
    } finally {
      await server.stop();
    }
  });

  it("starts a new session when the pid is unknown (recovered false)", async () => {
    const server = await startServer({ app: "jsapp:socketio_app", args: RECOVERY });
    try {
      const socket = io(server.http, { transports: ["websocket"], reconnection: false, auth: {} });
      clients.add(socket);
      socket.auth = { pid: "nobody.xyz", offset: "1" };
      await once(socket, "connect");
      assert.equal(socket.recovered, false);
      assert.deepEqual(await socket.emitWithAck("echo", 1), 1);
      socket.disconnect();
    } finally {
      await server.stop();
    }
  });

  it("resumes on another node of a Redis cluster", async () => {
    const prefix = `sio2-${process.pid}-${Date.now()}`;
    const cluster = [...RECOVERY, "--cluster-url", "redis://127.0.0.1:6379", "--cluster-prefix", prefix];
    const a = await startServer({ app: "jsapp:socketio_app", args: cluster });
    const b = await startServer({ app: "jsapp:socketio_app", args: cluster });
    try {
      const socket = sioClient(a);
      await once(socket, "connect");
      const firstId = socket.id;
      const got = collect(socket, "shouted");
      await socket.emitWithAck("enter", "rec2");
      const shouter = await connectedSio(b);
      // The room's subscription on node a may take a moment: shout until one arrives.
      for (let n = 0; got.length === 0 && n < 100; n++) {
        await shouter.emitWithAck("shout", { room: "rec2", text: "one" });
        await new Promise((r) => setTimeout(r, 50));
      }
      await until(() => got.length >= 1);
      const before = got.length;
      await cutAndResume(socket, shouter, "rec2", ["two", "three"], b);
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, firstId);
      await until(() => got.length === before + 2);
      assert.deepEqual(got.slice(before).map((args) => args[0]), ["two", "three"]);
      socket.disconnect();
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});

/** tests/rrproxy.py in its own process: a round-robin proxy over `ports` (no affinity, no
 * WebSocket upgrades). */
function roundRobinProxy(ports) {
  const python = process.env.SMARTSOCKET_PYTHON || join(ROOT, ".venv", "bin", "python");
  const child = spawn(python, [join(ROOT, "tests", "rrproxy.py"), ...ports.map(String)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const found = /listening (\d+)/.exec(out);
      if (found) resolve({ http: `http://127.0.0.1:${found[1]}`, stop: () => child.kill() });
    });
    child.once("exit", (code) => reject(new Error(`proxy exited (${code})`)));
  });
}

describe("socket.io-client polling through a round-robin proxy (two nodes, no affinity)", () => {
  it("events, acks both ways and broadcasts both ways", async () => {
    const prefix = `rr-${process.pid}-${Date.now()}`;
    const cluster = ["--cluster-url", "redis://127.0.0.1:6379", "--cluster-prefix", prefix];
    const a = await startServer({ app: "jsapp:socketio_app", args: cluster });
    const b = await startServer({ app: "jsapp:socketio_app", args: cluster });
    const proxy = await roundRobinProxy([a.port, b.port]);
    try {
      const one = await connectedSio(proxy, { transports: ["polling"] });
      const two = await connectedSio(proxy, { transports: ["polling"] });
      for (let n = 0; n < 6; n++) assert.deepEqual(await one.emitWithAck("echo", { n }), { n });
      one.on("question", (data, ack) => ack(data.n + 1));
      assert.deepEqual(await one.emitWithAck("ask", { event: "question", data: { n: 1 } }), { result: 2 });
      await one.emitWithAck("enter", "rr");
      await two.emitWithAck("enter", "rr");
      // The room's subscriptions on both nodes may take a moment: shout until it arrives.
      const gotTwo = [];
      two.on("shouted", (text) => gotTwo.push(text));
      for (let n = 0; gotTwo.length === 0 && n < 100; n++) {
        await one.emitWithAck("shout", { room: "rr", text: "from one" });
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(gotTwo[0], "from one");
      const gotOne = [];
      one.on("shouted", (text) => gotOne.push(text));
      await two.emitWithAck("shout", { room: "rr", text: "from two" });
      const end = Date.now() + 10000;
      while (!gotOne.includes("from two") && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      assert.ok(gotOne.includes("from two"));
      assert.equal(one.io.engine.transport.name, "polling");
    } finally {
      proxy.stop();
      await a.stop();
      await b.stop();
    }
  });
});
