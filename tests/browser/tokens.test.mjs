// JWT connection tokens in headless Chromium: the browser client served at
// /smartsocket/client.js with options.getToken. Short-lived tokens (10 s) are refreshed ahead of
// expiry with `$refresh` on the same connection; a token left to lapse gets the close 4003, and
// the client fetches a fresh one and reconnects. No message is lost either way.
//
// Deterministic: the server (tests/js/jsapp.py create_jwt) runs on a clock the page moves with
// the "advance" event, the client's tokenClock is moved alike and checkToken() is called by the
// page (tokenCheckInterval is an hour), and the jitter comes from a seeded random source. No
// real seconds are waited for an expiry. Tokens are signed in Node (exposed to the page as
// `mint`), so the secret never has to be in the page.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

const SECRET = "s3cret-s3cret-s3cret-s3cret-0123";
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
function sign(claims) {
  const input = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
}

// In the page: bounded waits, and a seeded random source (mulberry32) for the refresh jitter.
const PRELUDE = `
window.until = async (predicate, ms, what) => {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(what + " not met within " + ms + " ms");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};
window.seeded = (seed) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
`;

describe("JWT tokens in Chromium", () => {
  let server, browser;
  before(async () => {
    server = await startServer({ app: "jsapp:create_jwt", args: ["--jwt-secret", SECRET, "--jwt-leeway", "0"] });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  async function page() {
    const tab = await browser.open(`${server.http}/`);
    await tab.exposeFunction("mint", (claims) => sign(claims));
    await tab.addScriptTag({ url: `${server.http}/smartsocket/client.js` });
    await tab.addScriptTag({ content: PRELUDE });
    return tab;
  }

  it("refreshes short-lived tokens ahead of expiry on the same connection, losing no message", async () => {
    const tab = await page();
    const steps = 60;
    const result = await tab.evaluate(async (steps) => {
      const control = new SmartSocket({ getToken: () => mint({ sub: "control", exp: 1_900_000_000 }) });
      await control.connect();
      let clock = (await control.call("now")) * 1000; // the client's tokenClock (ms), moved with the server's
      const minted = [];
      const ann = new SmartSocket({
        reconnectDelay: 20,
        reconnectDelayMax: 50,
        tokenClock: () => clock,
        tokenRandom: seeded(7),
        tokenCheckInterval: 3600_000, // the page calls checkToken() itself
        getToken: () => (minted.push(clock / 1000), mint({ sub: "ann", iat: clock / 1000, exp: clock / 1000 + 10 })),
      });
      const ticks = [];
      const disconnects = [];
      const errors = [];
      const expired = [];
      ann.on("tick", (n) => ticks.push(n));
      ann.on("disconnect", (info) => disconnects.push(info.code));
      ann.on("error", (info) => errors.push(info.message));
      await ann.connect();
      const sid = ann.id;
      const user = await ann.call("whoami");
      for (let step = 0; step < steps; step++) {
        // The server's clock first, then the client's: a token minted by the client's clock is
        // never ahead of the server's (leeway 0).
        expired.push(await control.call("advance", 1));
        clock += 1000;
        await ann.checkToken();
        await control.call("push", { user: "ann", n: step });
        ann.send("note", step);
      }
      await until(() => ticks.length >= steps, 10000, `${steps} ticks`);
      await ann.call("whoami"); // after the notes: they are in
      const notes = await control.call("notes", "ann");
      const out = { user, ticks, notes, disconnects: disconnects.slice(), errors: errors.slice(), expired, minted, sameId: ann.id === sid, refreshes: ann.tokenRefreshes };
      await ann.close();
      await control.close();
      return out;
    }, steps);
    const every = [...Array(steps).keys()];
    assert.equal(result.user, "ann");
    assert.deepEqual(result.ticks, every);
    assert.deepEqual(result.notes, every);
    assert.deepEqual(result.disconnects, []);
    assert.deepEqual(result.errors, []);
    assert.ok(result.expired.every((n) => n === 0), `expired ${result.expired}`);
    assert.equal(result.sameId, true);
    // 60 s of 10 s tokens, each refreshed at 6.5..7.5 s of its life: 8 or 9 refreshes.
    assert.ok(result.refreshes >= 7, `${result.refreshes} refreshes`);
    assert.equal(result.minted.length, result.refreshes + 1);
    const gaps = result.minted.slice(1).map((t, i) => t - result.minted[i]);
    assert.ok(gaps.every((gap) => gap >= 6 && gap <= 8), `gaps ${gaps}`);
    assert.deepEqual(browser.errors, []);
    await tab.close();
  });

  it("after a close 4003 gets a fresh token and reconnects, losing no message", async () => {
    const tab = await page();
    const result = await tab.evaluate(async () => {
      const control = new SmartSocket({ getToken: () => mint({ sub: "control", exp: 1_900_000_000 }) });
      await control.connect();
      let now = await control.call("now");
      let issued = 0;
      const bob = new SmartSocket({
        reconnectDelay: 20,
        reconnectDelayMax: 50,
        tokenClock: () => now * 1000,
        tokenCheckInterval: 3600_000,
        getToken: () => (issued++, mint({ sub: "bob", exp: now + 10 })),
      });
      const ticks = [];
      const events = [];
      bob.on("tick", (n) => ticks.push(n));
      bob.on("connect", (info) => events.push(info));
      bob.on("disconnect", (info) => {
        events.push(info.code);
        if (info.code !== 4003) return;
        // Sent while the connection is down: they wait in the offline buffer for the next one.
        for (let n = 5; n < 10; n++) bob.send("note", n);
      });
      await bob.connect();
      const firstId = bob.id;
      bob.tokenDue = null; // never refreshed: this test lets the token lapse
      for (let n = 0; n < 5; n++) {
        await control.call("push", { user: "bob", n });
        bob.send("note", n);
      }
      await bob.call("whoami"); // its ack follows the notes on bob's connection: they are in
      await until(() => ticks.length >= 5, 10000, "5 ticks");
      now += 20;
      const closed = await control.call("advance", 20);
      await until(() => events.length >= 3, 10000, "the reconnect");
      const user = await bob.call("whoami");
      for (let n = 5; n < 10; n++) await control.call("push", { user: "bob", n });
      await until(() => ticks.length >= 10, 10000, "10 ticks");
      const notes = await control.call("notes", "bob");
      const out = { closed, user, ticks, notes, events: events.slice(), issued, newId: bob.id !== firstId };
      await bob.close();
      await control.close();
      return out;
    });
    const every = [...Array(10).keys()];
    assert.equal(result.closed, 1);
    assert.deepEqual(result.events, [{ recovered: false }, 4003, { recovered: false }]);
    assert.equal(result.issued, 2);
    assert.equal(result.newId, true);
    assert.equal(result.user, "bob");
    assert.deepEqual(result.ticks, every);
    assert.deepEqual(result.notes, every);
    assert.deepEqual(browser.errors, []);
    await tab.close();
  });
});
