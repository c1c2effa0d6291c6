// JWT connection tokens in the JS client (options.getToken): sent at connect, refreshed ahead
// of expiry with jitter ($refresh), and a fresh token after a close 4003. The server
// (tests/js/jsapp.py create_jwt) runs on a clock the test moves with the "advance" event, and
// the client's tokenClock is moved alike: no real seconds of waiting for an expiry.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, describe, it } from "node:test";
import { SmartSocket, refreshAt, tokenTimes } from "../../js/src/smartsocket.js";
import { WebSocket, next, startServer, until } from "./helpers.mjs";

const SECRET = "s3cret-s3cret-s3cret-s3cret-0123";
const NOW = 1_800_000_000;

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
function sign(claims) {
  const input = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
}

// A seeded random source (mulberry32): the jitter is reproducible.
function seeded(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sockets = new Set();
function client(url, options) {
  const socket = new SmartSocket(url, { WebSocket, reconnectDelay: 20, reconnectDelayMax: 50, ...options });
  sockets.add(socket);
  return socket;
}
let server;
async function jwtServer() {
  server = server || (await startServer({ app: "jsapp:create_jwt", args: ["--jwt-secret", SECRET, "--jwt-leeway", "0"] }));
  return server;
}

after(async () => {
  await Promise.all([...sockets].map((s) => s.close()));
  if (server) await server.kill();
});

describe("connection tokens", () => {
  it("reads exp and iat, and refreshes a quarter of the lifetime early, minus jitter", () => {
    assert.deepEqual(tokenTimes(sign({ sub: "a", exp: NOW + 10, iat: NOW })), [NOW + 10, NOW]);
    assert.deepEqual(tokenTimes("not a token"), [null, null]);
    assert.equal(refreshAt(NOW + 10, NOW, NOW, () => 0), NOW + 7.5);
    assert.equal(refreshAt(NOW + 10, NOW, NOW, () => 0.999999), NOW + 6.500001);
    assert.equal(refreshAt(NOW + 86400, NOW, NOW, () => 0), NOW + 86400 - 300);
    assert.equal(refreshAt(null, null, NOW), null);
  });

  it("refreshes by itself over a long session with short tokens and loses no message", async () => {
    const { url } = await jwtServer();
    const control = client(url, { getToken: () => sign({ sub: "control", exp: NOW + 86400 }) });
    await control.connect();
    const start = await control.call("now");
    let clock = start * 1000; // the client's tokenClock, in ms, moved with the server's
    const minted = [];
    const ann = client(url, {
      tokenClock: () => clock,
      tokenRandom: seeded(7),
      tokenCheckInterval: 3600_000, // the test calls checkToken() itself
      getToken: () => (minted.push(clock / 1000), sign({ sub: "ann", iat: clock / 1000, exp: clock / 1000 + 10 })),
    });
    const ticks = [];
    ann.on("tick", (n) => ticks.push(n));
    const disconnects = [];
    ann.on("disconnect", (info) => disconnects.push(info));
    const errors = [];
    ann.on("error", (info) => errors.push(info));
    await ann.connect();
    assert.equal(await ann.call("whoami"), "ann");
    for (let step = 0; step < 120; step++) {
      // The server's clock first, then the client's: a token minted by the client's clock is
      // never ahead of the server's (leeway 0 here).
      assert.equal(await control.call("advance", 1), 0, `a socket expired at step ${step}`);
      clock += 1000;
      await ann.checkToken();
      assert.equal(await control.call("push", { user: "ann", n: step }), 1);
    }
    await until(() => ticks.length == 120, 5000, "every tick");
    assert.deepEqual(ticks, [...Array(120).keys()]);
    assert.deepEqual(disconnects, []);
    assert.deepEqual(errors, []);
    assert.ok(ann.tokenRefreshes >= 12, `${ann.tokenRefreshes} refreshes`);
    const gaps = minted.slice(1).map((t, i) => t - minted[i]);
    assert.ok(gaps.every((gap) => gap >= 6 && gap <= 8), `gaps ${gaps}`);
    await ann.close();
    await control.close();
  });

  it("gets a fresh token and reconnects after a close 4003", async () => {
    const { url } = await jwtServer();
    const control = client(url, { getToken: () => sign({ sub: "control", exp: NOW + 86400 }) });
    await control.connect();
    let now = await control.call("now");
    let issued = 0;
    const bob = client(url, {
      tokenClock: () => now * 1000,
      tokenCheckInterval: 3600_000,
      getToken: () => (issued++, sign({ sub: "bob", exp: now + 10 })),
    });
    await bob.connect();
    const firstId = bob.id;
    bob.tokenDue = null; // never refreshed: this test lets the token lapse
    const dropped = next(bob, "disconnect");
    const back = new Promise((resolve) => bob.on("connect", resolve));
    now += 20;
    assert.equal(await control.call("advance", 20), 1);
    assert.equal((await dropped).code, 4003);
    await back;
    assert.notEqual(bob.id, firstId);
    assert.equal(issued, 2);
    assert.equal(await bob.call("whoami"), "bob");
  });
});
