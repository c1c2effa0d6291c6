// Helpers of the JS client tests: the real Python server as a subprocess, the `ws` package as the
// WebSocket implementation (resolved from js/node_modules), bounded waits.
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const TESTS_JS = join(ROOT, "tests", "js");
export const requireFromJs = createRequire(join(ROOT, "js", "package.json"));
export const WebSocket = requireFromJs("ws");
export const { WebSocketServer } = WebSocket;
const PYTHON = process.env.SMARTSOCKET_PYTHON || join(ROOT, ".venv", "bin", "python");

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** Run `python -m smartsocket serve` on 127.0.0.1 (the demo app, or `app` = "jsapp:create", the
 * test app in tests/js). Resolves once it prints its URL. */
export async function startServer({ port = 0, app = null, args = [], tries = 20 } = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnServer(port, app, args);
    } catch (err) {
      // Restarting on the same port: the old process may not have released it yet.
      if (!port || attempt >= tries) throw err;
      await sleep(100);
    }
  }
}

function spawnServer(port, app, args) {
  const argv = ["-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", String(port)];
  if (app) argv.push("--app", app);
  argv.push("--log-level", "WARNING", ...args);
  const child = spawn(PYTHON, argv, {
    cwd: TESTS_JS,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
  });
  children.add(child);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
  exited.then(() => children.delete(child));
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
    if (process.env.SMARTSOCKET_TEST_VERBOSE) process.stderr.write(chunk);
  });
  return new Promise((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`server did not start in 15 s: ${stderr}`));
    }, 15000);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before listening: ${stderr}`));
    });
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const match = /listening on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(stdout);
      if (!match) return;
      clearTimeout(timer);
      const bound = Number(match[1]);
      resolve({
        port: bound,
        url: `ws://127.0.0.1:${bound}/`,
        http: `http://127.0.0.1:${bound}`,
        child,
        exited,
        /** SIGKILL: the server vanishes without closing anything. */
        kill: () => (child.kill("SIGKILL"), exited),
        /** SIGTERM: graceful close (clients get 1001), SIGKILL after 5 s. */
        stop: async () => {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
          await exited;
          clearTimeout(timer);
        },
      });
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The next `event` of a SmartSocket (its first argument), or a rejection after `ms`. */
export function next(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, handler);
      reject(new Error(`no '${event}' within ${ms} ms`));
    }, ms);
    const handler = (arg) => {
      clearTimeout(timer);
      socket.off(event, handler);
      resolve(arg);
    };
    socket.on(event, handler);
  });
}

/** Poll `predicate` until it returns something truthy; rejects after `ms`. */
export async function until(predicate, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
    await sleep(10);
  }
}

/** `promise`, or a rejection if it does not settle within `ms` from now. Start it only once
 * what the promise waits for can happen (the server is up): a bound that also covers the
 * start-up of a server process fails on a loaded machine. */
export function within(promise, ms, what = "promise") {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} not settled within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Records every `event` of a SmartSocket into an array. */
export function record(socket, ...events) {
  const log = [];
  for (const event of events) socket.on(event, (arg) => log.push([event, arg]));
  return log;
}
