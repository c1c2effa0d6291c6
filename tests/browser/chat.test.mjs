// End to end in headless Chromium: the real server serves the demo chat page (/) and the client
// (/smartsocket/client.js); two tabs chat through a room, acks go both ways, big and binary
// payloads cross intact, and both tabs survive a server restart on the same port.
//
// The screenshot of the page goes to a temporary file; SMARTSOCKET_UPDATE_SCREENSHOT=1 writes
// docs/demo-chat.png instead (the committed one).
import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ROOT, startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

const APP = "jsapp:create"; // the demo events plus members/presence/typing, and `ask`

// ---- page helpers (run in Node, act on a page)

const online = (page, timeout) =>
  page.waitForFunction(() => window.chat.socket.connected && document.getElementById("status").textContent.startsWith("online"), null, { timeout });
const statusIs = (page, text) => page.waitForFunction((t) => document.getElementById("status").textContent.includes(t), text);
const people = (page) => page.$$eval("#people li", (items) => items.map((li) => li.textContent));
const hasPeople = (page, names) =>
  page.waitForFunction((want) => {
    const have = [...document.querySelectorAll("#people li")].map((li) => li.textContent);
    return want.every((n) => have.includes(n));
  }, names);
/** Waits for a message from someone else with exactly `text`; returns its sender label. */
const received = (page, text) =>
  page
    .waitForFunction((t) => [...document.querySelectorAll(".msg:not(.mine)")].find((m) => m.querySelector(".text").textContent === t), text)
    .then((handle) => handle.evaluate((m) => m.querySelector(".who").textContent));
async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}
const lastMineMeta = (page) => page.$$eval(".msg.mine .meta", (items) => items.at(-1).textContent);
/** Waits until the meta line of my last message in the current room contains `text`. */
const lastMineSays = (page, text) =>
  page.waitForFunction((t) => [...document.querySelectorAll(".msg.mine .meta")].at(-1)?.textContent.includes(t), text);

describe("the demo chat page in Chromium", () => {
  let server, browser, alice, bob;
  before(async () => {
    server = await startServer({ app: APP });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  it("serves the client builds: client.js (classic) and client.mjs (ESM)", async () => {
    for (const name of ["client.js", "client.mjs"]) {
      const response = await fetch(`${server.http}/smartsocket/${name}`);
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type"), /javascript/);
      assert.equal(await response.text(), readFileSync(join(ROOT, "src", "smartsocket", "static", name), "utf8"));
    }
    const page = await browser.open(`${server.http}/`);
    assert.equal(await page.evaluate(() => typeof window.SmartSocket), "function");
    const viaEsm = await page.evaluate(async () => {
      const { SmartSocket, default: byDefault } = await import("/smartsocket/client.mjs");
      const socket = new SmartSocket(); // default URL: this page's host
      await socket.connect();
      const reply = await socket.call("echo", { esm: true, same: SmartSocket === byDefault });
      const url = socket.url;
      await socket.close();
      return { reply, url };
    });
    assert.deepEqual(viaEsm.reply, { esm: true, same: true });
    assert.equal(viaEsm.url, `ws://127.0.0.1:${server.port}/`);
    await page.close();
  });

  it("lets two tabs chat through a room, with presence and a typing indicator", async () => {
    alice = await browser.open(`${server.http}/?name=Alice&room=lobby`);
    bob = await browser.open(`${server.http}/?name=Bob&room=lobby`);
    await Promise.all([online(alice), online(bob)]);
    await hasPeople(alice, ["Alice (you)", "Bob"]);
    await hasPeople(bob, ["Bob (you)", "Alice"]);
    assert.equal(await alice.textContent("#room-count"), "2 members");

    await bob.fill("#text", "Hi Al");
    await alice.waitForFunction(() => document.getElementById("typing").textContent === "Bob is typing…");
    await bob.fill("#text", "");
    await say(bob, "Hi Alice! Did the deploy go through?");
    assert.equal(await received(alice, "Hi Alice! Did the deploy go through?"), "Bob");
    await alice.waitForFunction(() => document.getElementById("typing").textContent === "");
    await say(alice, "Yes: 3 nodes up, p99 latency under 5 ms.");
    assert.equal(await received(bob, "Yes: 3 nodes up, p99 latency under 5 ms."), "Alice");
    await lastMineSays(alice, "delivered to 1");

    // a second room: Bob is not in it
    await alice.fill("#room-input", "ops");
    await alice.press("#room-input", "Enter");
    await alice.waitForFunction(() => document.getElementById("room-title").textContent === "#ops");
    await alice.waitForFunction(() => document.getElementById("room-count").textContent === "1 member");
    assert.deepEqual(await people(alice), ["Alice (you)"]);
    await say(alice, "nobody here yet");
    await lastMineSays(alice, "delivered to 0");
    // a message in lobby while Alice looks at ops: an unread badge
    await say(bob, "Great news, thanks!");
    await alice.waitForFunction(() => [...document.querySelectorAll("#rooms .badge")].some((b) => b.textContent === "1"));
    await alice.bringToFront(); // a background tab runs no animation frames: clicks would wait
    await alice.click("#rooms li:first-child button.room");
    assert.equal(await received(alice, "Great news, thanks!"), "Bob");
    // leaving tells the others
    await bob.fill("#room-input", "ops");
    await bob.press("#room-input", "Enter");
    await hasPeople(alice, ["Alice (you)", "Bob"]); // presence in lobby (Alice looks at lobby)
    await bob.bringToFront();
    await bob.click("#rooms li:last-child button.leave");
    await bob.waitForFunction(() => document.querySelectorAll("#rooms li").length === 1);
    await alice.bringToFront();
    await alice.click("#rooms li:last-child button.room");
    await alice.waitForFunction(() => [...document.querySelectorAll("#log .sys")].some((n) => n.textContent === "Bob left"));
    await alice.click("#rooms li:first-child button.room");

    // the screenshot: a short conversation, both members, Bob typing
    await bob.fill("#text", "Sending the dashboard link");
    await alice.waitForFunction(() => document.getElementById("typing").textContent === "Bob is typing…");
    const shot = process.env.SMARTSOCKET_UPDATE_SCREENSHOT ? join(ROOT, "docs", "demo-chat.png") : join(tmpdir(), `smartsocket-demo-chat-${process.pid}.png`);
    await alice.screenshot({ path: shot });
    assert.ok(statSync(shot).size > 10000, "a real screenshot");
    await bob.fill("#text", "");
  });

  it("gets acks both ways in the browser", async () => {
    const result = await alice.evaluate(async () => {
      const socket = window.chat.socket;
      const out = {};
      out.echo = await socket.call("echo", { n: 1, list: [1, "two"] });
      out.notInRoom = await socket.call("chat", { room: "nowhere", text: "hi" }).catch((e) => ({ code: e.code, name: e.name }));
      out.timeout = await socket.call("sleep", 2, { timeout: 100 }).catch((e) => e.code);
      // server -> browser calls: a value, a Promise, a thrown error with a code, no handler
      socket.on("add", ({ a, b }) => a + b);
      socket.on("later", (x) => new Promise((resolve) => setTimeout(() => resolve(x * 2), 10)));
      socket.on("boom", () => {
        throw Object.assign(new Error("no way"), { code: "refused" });
      });
      out.add = await socket.call("ask", { event: "add", data: { a: 2, b: 3 } });
      out.later = await socket.call("ask", { event: "later", data: 21 });
      out.boom = await socket.call("ask", { event: "boom" });
      out.none = await socket.call("ask", { event: "nobody-handles-this" });
      out.rtt = await socket.ping();
      return out;
    });
    assert.deepEqual(result.echo, { n: 1, list: [1, "two"] });
    assert.deepEqual(result.notInRoom, { code: "not_in_room", name: "SmartSocketError" });
    assert.equal(result.timeout, "timeout");
    assert.deepEqual(result.add, { result: 5 });
    assert.deepEqual(result.later, { result: 42 });
    assert.deepEqual(result.boom, { error: { code: "refused", message: "no way" } });
    assert.equal(result.none.error.code, "unknown_event");
    assert.ok(result.rtt >= 0 && result.rtt < 1000);
  });

  it("carries a 100 KB message and binary payloads intact", async () => {
    // 100 KiB (UTF-8) of mixed text (ASCII, accents, emoji) through the page's composer
    const big = Array.from({ length: 3200 }, (_, i) => `line ${String(i).padStart(5, "0")} é✓🚀 abcdefghij `).join("");
    assert.equal(Buffer.byteLength(big), 100 * 1024);
    await alice.evaluate((text) => { window.bigSeen = null; window.chat.socket.on("chat", (m) => { if (m.text.length > 50000) window.bigSeen = m.text; }); }, null);
    await bob.fill("#text", big);
    await bob.press("#text", "Enter");
    const seen = await alice.waitForFunction(() => window.bigSeen).then((h) => h.jsonValue());
    assert.equal(seen.length, big.length);
    assert.equal(seen, big);
    await alice.waitForFunction(() => [...document.querySelectorAll(".msg .text")].some((n) => n.textContent.length > 50000));

    const binary = await alice.evaluate(async () => {
      const socket = window.chat.socket;
      const bytes = new Uint8Array(100 * 1024).map((_, i) => (i * 131 + 7) & 255);
      const same = (a, b) => a instanceof Uint8Array && a.length === b.length && a.every((v, i) => v === b[i]);
      const top = await socket.call("echo", bytes);
      const nested = await socket.call("echo", { name: "blob.bin", data: bytes.buffer });
      socket.on("reverse", (d) => ({ ok: d.bytes instanceof Uint8Array, bytes: d.bytes.slice().reverse() }));
      const asked = await socket.call("ask", { event: "reverse", data: { bytes: new Uint8Array([1, 2, 3]) } }, { binary: true });
      return {
        top: same(top, bytes),
        nested: nested.name === "blob.bin" && same(nested.data, bytes),
        asked: asked.result.ok && same(asked.result.bytes, new Uint8Array([3, 2, 1])),
      };
    });
    assert.deepEqual(binary, { top: true, nested: true, asked: true });
  });

  it("reconnects both tabs after the server restarts on the same port, and they keep chatting", async () => {
    const ids = await Promise.all([alice, bob].map((p) => p.evaluate(() => window.chat.socket.id)));
    const port = server.port;
    await server.kill();
    await Promise.all([statusIs(alice, "reconnecting"), statusIs(bob, "reconnecting")]);
    await say(alice, "sent while the server was down");
    assert.match(await lastMineMeta(alice), /queued \(offline\)/);

    server = await startServer({ app: APP, port });
    // Alice's browser reports the network back: she retries at once; Bob waits for his backoff.
    await alice.evaluate(() => window.dispatchEvent(new Event("online")));
    await online(alice);
    // Bob's next attempt comes within reconnectDelayMax (10 s) + 50 % jitter of the server start,
    // however long the start took: bound the wait by that, not by the default 10 s.
    await online(bob, 20000);
    // the queued message went out after Alice joined lobby again (no not_in_room)
    await lastMineSays(alice, "delivered to");
    const newIds = await Promise.all([alice, bob].map((p) => p.evaluate(() => window.chat.socket.id)));
    assert.notEqual(newIds[0], ids[0]);
    assert.notEqual(newIds[1], ids[1]);
    await hasPeople(alice, ["Alice (you)", "Bob"]);
    await hasPeople(bob, ["Bob (you)", "Alice"]);
    await say(bob, "back online");
    assert.equal(await received(alice, "back online"), "Bob");
    await say(alice, "welcome back");
    assert.equal(await received(bob, "welcome back"), "Alice");
    assert.deepEqual(browser.errors, []);
  });
});

describe("the demo chat page against a server without members/typing", () => {
  let server, browser;
  before(async () => {
    server = await startServer({ app: "jsapp:minimal_app" }); // no members or typing events
    browser = await launch({ viewport: { width: 390, height: 740 } }); // a phone
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  it("still chats, with a member count instead of names and no typing indicator", async () => {
    const one = await browser.open(`${server.http}/?name=Ann&room=lobby`);
    const two = await browser.open(`${server.http}/?name=Ben&room=lobby`);
    await Promise.all([online(one), online(two)]);
    await two.waitForFunction(() => window.chat.state.features.members === false);
    await say(two, "hello from a phone");
    // chat messages still carry the sender's name (from join): the label uses it
    assert.equal(await received(one, "hello from a phone"), "Ben");
    assert.equal(await two.textContent("#room-count"), "2 members");
    assert.equal(await two.textContent("#people-summary"), "2 online");
    await two.fill("#text", "typing…");
    await two.waitForFunction(() => window.chat.state.features.typing === false);
    await two.fill("#text", "");
    await say(one, "hi Ben");
    assert.ok(await received(two, "hi Ben"));
    await two.screenshot({ path: join(tmpdir(), `smartsocket-demo-chat-phone-${process.pid}.png`) });
    assert.deepEqual(browser.errors, []);
  });
});
