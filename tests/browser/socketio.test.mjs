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

/** In the page: a socket in room "rec" and a second one (its own connection) that shouts to it;
 * cut the first one's transport (socket.io.engine.close(): no DISCONNECT packet, so the server
 * keeps the session for the recovery window), shout while it is down, reconnect, and report what
 * the resumed socket saw. */
function cutAndRecover(page, url, options) {
  return page.evaluate(
    async ([url, options]) => {
      const opts = { reconnectionDelay: 50, reconnectionDelayMax: 200, ...options };
      // Waits on events; the bound only catches a hang (it starts once the event can happen).
      const next = (socket, event) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no '${event}' within 10 s`)), 10000);
          socket.once(event, (...args) => (clearTimeout(timer), resolve(args)));
        });
      const socket = io(url, opts);
      await next(socket, "connect");
      const shouter = io(url, { ...opts, forceNew: true }); // not multiplexed on socket's connection
      await next(shouter, "connect");
      const report = { firstRecovered: socket.recovered, transport: socket.io.engine.transport.name };
      const firstId = socket.id;
      const got = [];
      const waiters = [];
      socket.on("shouted", (text, offset) => {
        got.push([text, typeof offset]);
        for (const w of waiters.splice(0)) w.check();
      });
      const received = (n) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`${got.length} of ${n} 'shouted' within 10 s`)), 10000);
          const w = { check: () => (got.length >= n ? (clearTimeout(timer), resolve()) : waiters.push(w)) };
          w.check();
        });
      await socket.emitWithAck("enter", "rec");
      await shouter.emitWithAck("shout", { room: "rec", text: "one" });
      await received(1);

      // The manager does not reconnect until the shouts are out (so they are surely missed,
      // whatever the machine's speed); then socket.connect() reconnects with its pid and offset.
      socket.io.reconnection(false);
      const dropped = next(socket, "disconnect");
      socket.io.engine.close();
      report.reason = (await dropped)[0];
      for (const text of ["two", "three"]) await shouter.emitWithAck("shout", { room: "rec", text });
      report.connectedWhileDown = socket.connected;
      report.gotWhileDown = got.length;
      socket.io.reconnection(true);
      const back = next(socket, "connect");
      socket.connect();
      await back;
      report.recovered = socket.recovered;
      report.sameId = socket.id === firstId;
      await received(3);
      // live again in the room: a later shout arrives too
      await shouter.emitWithAck("shout", { room: "rec", text: "four" });
      await received(4);
      report.got = got;
      socket.disconnect();
      shouter.disconnect();
      return report;
    },
    [url, options],
  );
}

describe("socket.io-client connection-state recovery in Chromium", () => {
  let server, browser, page;
  before(async () => {
    server = await startServer({ app: "jsapp:socketio_page", args: ["--recovery-window", "10"] });
    browser = await launch();
    page = await browser.open(`${server.http}/`);
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  const missed = [["one", "string"], ["two", "string"], ["three", "string"], ["four", "string"]];

  for (const [name, options, transport] of [
    ["over WebSocket", { transports: ["websocket"] }, "websocket"],
    ["over long-polling", { transports: ["polling"] }, "polling"],
  ]) {
    it(`resumes the session after the transport is cut, with the missed events in order (${name})`, async () => {
      const report = await cutAndRecover(page, server.http, options);
      assert.deepEqual(report, {
        firstRecovered: false,
        transport,
        reason: "forced close", // engine.io-client's word for engine.close(): it still reconnects
        connectedWhileDown: false,
        gotWhileDown: 1,
        recovered: true,
        sameId: true,
        got: missed,
      });
      assert.deepEqual(browser.errors, []);
    });
  }
});
