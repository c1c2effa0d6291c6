// Headless Chromium for the end-to-end tests: Debian's /usr/bin/chromium driven by playwright-core
// (which never downloads a browser), a fresh profile per launch, loopback traffic only.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireFromJs } from "../js/helpers.mjs";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // background tabs keep their timers (two tabs chat at once)
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

/** A browser context on a fresh --user-data-dir; `close()` removes the profile. */
export async function launch({ viewport = { width: 1100, height: 700 } } = {}) {
  const { chromium } = requireFromJs("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "smartsocket-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport,
    timeout: 30000,
    serviceWorkers: "block",
  });
  context.setDefaultTimeout(10000);
  const errors = [];
  return {
    context,
    errors,
    /** A new tab at `url`, recording page errors and console errors into `errors`. */
    async open(url) {
      const page = await context.newPage();
      page.on("pageerror", (err) => errors.push(`${url}: ${err.message}`));
      page.on("console", (msg) => {
        if (msg.type() === "error" && !/WebSocket connection to .* failed/.test(msg.text())) errors.push(`${url}: ${msg.text()}`);
      });
      await page.goto(url);
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
