// The live dashboard in headless Chromium: while this test drives known traffic, the page's
// figures and charts update every second with the right numbers.
//
// The screenshot goes to a temporary file; SMARTSOCKET_UPDATE_SCREENSHOT=1 writes
// docs/dashboard.png instead (the committed one).
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SmartSocket } from "../../js/src/smartsocket.js";
import { ROOT, WebSocket, sleep, startServer } from "../js/helpers.mjs";
import { launch } from "./browser.mjs";

/** The left-axis tick labels of every chart, as numbers ("2.5k" -> 2500). */
const ticks = (page) =>
  page.$$eval("svg", (svgs) =>
    svgs.map((svg) => ({
      id: svg.id,
      labels: [...svg.querySelectorAll("text[text-anchor=end]")].map((t) => t.textContent),
    })),
  );
const UNITS = { k: 1e3, M: 1e6, G: 1e9 };
const parse = (label) => Number(label.replace(/[kMG]$/, "")) * (UNITS[label.at(-1)] || 1);

/** Ticks start at 0 and step by 1, 2 or 5 times a power of ten. */
function assertRoundTicks({ id, labels }) {
  const values = labels.map(parse);
  assert.ok(values.length >= 2, `${id}: ticks ${labels}`);
  assert.equal(values[0], 0, `${id}: ${labels}`);
  const step = values[1] - values[0];
  const mantissa = step / 10 ** Math.floor(Math.log10(step));
  assert.ok([1, 2, 5].some((m) => Math.abs(mantissa - m) < 1e-6), `${id}: step ${step} (${labels})`);
  values.forEach((v, i) => assert.ok(Math.abs(v - i * step) < step * 1e-6, `${id}: ${labels}`));
}

/** Cards of a grid, grouped by row: every row spans the grid's whole width (no card alone). */
const rows = (page, selector) =>
  page.$$eval(selector, (cards) => {
    const grid = cards[0].parentElement.getBoundingClientRect();
    const style = getComputedStyle(cards[0].parentElement);
    const inner = [grid.left + parseFloat(style.paddingLeft), grid.right - parseFloat(style.paddingRight)];
    const byRow = new Map();
    for (const card of cards) {
      const box = card.getBoundingClientRect();
      const row = byRow.get(Math.round(box.top)) || [];
      row.push([box.left, box.right]);
      byRow.set(Math.round(box.top), row);
    }
    return { inner, rows: [...byRow.values()] };
  });
async function assertFullRows(page, selector) {
  const { inner, rows: found } = await rows(page, selector);
  for (const row of found) {
    const left = Math.min(...row.map((b) => b[0]));
    const right = Math.max(...row.map((b) => b[1]));
    assert.ok(Math.abs(left - inner[0]) < 2 && Math.abs(right - inner[1]) < 2, `${selector}: a row of ${row.length} does not fill the width (${JSON.stringify(found.map((r) => r.length))})`);
  }
  const counts = found.map((r) => r.length);
  return counts;
}

const value = (page, id) => page.$eval(`#${id}`, (el) => Number(el.dataset.value));
const updates = (page) => page.evaluate(() => Number(document.body.dataset.updates || 0));

describe("the live dashboard", () => {
  let server, browser;
  const clients = [];
  before(async () => {
    server = await startServer({ args: ["--ping-interval", "0.2"] });
    browser = await launch({ viewport: { width: 1100, height: 900 } });
  });
  after(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await server?.kill();
  });

  it("shows connections, rates, latency and top rooms as traffic happens", async () => {
    const page = await browser.open(`${server.http}/smartsocket/dashboard`);
    await page.waitForFunction(() => document.getElementById("status").textContent === "live");
    assert.equal(await value(page, "kpi-connections"), 0); // the page's own feed is not counted

    for (let i = 0; i < 5; i++) {
      const c = new SmartSocket(server.url, { WebSocket });
      await c.connect();
      await c.call("join", { room: i < 3 ? "busy" : "quiet", name: `user${i}` });
      clients.push(c);
    }
    const seen = await updates(page);
    await page.waitForFunction((n) => Number(document.body.dataset.updates) >= n + 2, seen);
    assert.equal(await value(page, "kpi-connections"), 5);
    assert.equal(await value(page, "kpi-rooms"), 2);
    const rooms = await page.$$eval("#top-rooms tr", (rows) => rows.map((r) => [r.dataset.room, Number(r.dataset.members)]));
    assert.deepEqual(rooms, [["busy", 3], ["quiet", 2]]);

    // ~200 chats per second for 2.5 s: 200 in/s, 400 deliveries/s out (2 other members each)
    const sender = clients[0];
    const stop = Date.now() + 2500;
    let sent = 0;
    while (Date.now() < stop) {
      for (let k = 0; k < 10; k++, sent++) sender.send("chat", { room: "busy", text: `message ${sent} ${"lorem ipsum ".repeat(40)}` });
      await sleep(50);
    }
    const inRate = await value(page, "kpi-in");
    const outRate = await value(page, "kpi-out");
    assert.ok(inRate > 100 && inRate < 400, `messages in/s ${inRate}`);
    assert.ok(outRate > 1.5 * inRate, `deliveries/s ${outRate} for ${inRate} in/s`);
    const saved = await value(page, "kpi-saved");
    assert.ok(saved > 50, `compressed chats save bandwidth: ${saved}%`);
    await page.waitForFunction(() => Number(document.getElementById("kpi-latency").dataset.value) > 0);
    const latency = await value(page, "kpi-latency");
    assert.ok(latency > 0 && latency < 200, `heartbeat p50 ${latency} ms`);
    const paths = await page.$$eval("#chart-messages path", (ps) => ps.map((p) => p.getAttribute("d").split("L").length));
    assert.ok(paths.every((points) => points >= 3), "the messages chart has points");

    for (const chart of await ticks(page)) assertRoundTicks(chart);
    assert.deepEqual(await assertFullRows(page, ".kpi"), [4, 4]);
    assert.deepEqual(await assertFullRows(page, ".chart"), [2, 2, 1]);

    const stats = await (await fetch(`${server.http}/smartsocket/stats`)).json();
    // the joins and the chats, plus one $pong per heartbeat round trip measured
    assert.equal(stats.raw.messagesIn - stats.raw.latencySamples, 5 + sent);
    const shot = process.env.SMARTSOCKET_UPDATE_SCREENSHOT ? join(ROOT, "docs", "dashboard.png") : join(tmpdir(), `smartsocket-dashboard-${process.pid}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 10000, "a real screenshot");
    assert.deepEqual(browser.errors, []);
  });

  it("fits a phone-sized screen", async () => {
    const phone = await launch({ viewport: { width: 390, height: 800 } });
    try {
      const page = await phone.open(`${server.http}/smartsocket/dashboard`);
      await page.waitForFunction(() => Number(document.body.dataset.updates) >= 1);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `no horizontal scrolling (${overflow}px too wide)`);
      assert.deepEqual(await assertFullRows(page, ".kpi"), [2, 2, 2, 2]);
      assert.deepEqual(await assertFullRows(page, ".chart"), [1, 1, 1, 1, 1]);
      assert.deepEqual(phone.errors, []);
    } finally {
      await phone.close();
    }
  });
});

describe("the dashboard of a server with a stats token", () => {
  let server, browser;
  before(async () => {
    server = await startServer({ args: ["--stats-token", "s3cret"] });
    browser = await launch({ viewport: { width: 1100, height: 700 } });
  });
  after(async () => {
    await browser?.close();
    await server?.kill();
  });

  const notice = (page) =>
    page.waitForFunction(() => !document.getElementById("notice").hidden).then(() => page.textContent("#notice-text"));

  it("says that a token is needed, and where it goes", async () => {
    const page = await browser.open(`${server.http}/smartsocket/dashboard`);
    const text = await notice(page);
    assert.match(text, /needs a stats token/);
    assert.ok(text.includes(`${server.http}/smartsocket/dashboard?token=`), text);
    assert.equal(await page.textContent("#status"), "stats token needed");
    // the form puts the token in the address
    await page.fill("#notice input[name=token]", "s3cret");
    await page.click("#notice button");
    await page.waitForFunction(() => document.getElementById("status").textContent === "live");
    assert.equal(new URL(page.url()).searchParams.get("token"), "s3cret");
    assert.ok(await page.$eval("#notice", (n) => n.hidden));
  });

  it("says that a wrong token was refused", async () => {
    const page = await browser.open(`${server.http}/smartsocket/dashboard?token=wrong`);
    assert.match(await notice(page), /refused the stats token/);
    assert.equal(await page.textContent("#status"), "stats token refused");
  });
});
