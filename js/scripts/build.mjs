// Builds the client from src/smartsocket.js:
//   dist/smartsocket.js      ESM, readable (the source, bundled)
//   dist/smartsocket.min.js  minified classic script / UMD: defines `SmartSocket`
//   dist/smartsocket.cjs     CommonJS, for require()
// and the copies the Python server serves (committed, so no Node is needed at run time):
//   ../src/smartsocket/static/client.js   = dist/smartsocket.min.js  (GET /smartsocket/client.js)
//   ../src/smartsocket/static/client.mjs  = minified ESM              (GET /smartsocket/client.mjs)
//
// `node scripts/build.mjs --check` builds in memory and exits 1 when the committed static files
// differ from a fresh build (run `npm run build` in js/ and commit them).
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const staticDir = join(root, "..", "src", "smartsocket", "static");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const entry = join(root, "src", "smartsocket.js");
const banner = `/*! ${pkg.name} ${pkg.version} | SmartSocket protocol v1 | MIT */`;
const SIZE_BUDGET = 12 * 1024; // gzipped bytes of client.js

const common = {
  entryPoints: [entry],
  bundle: true,
  write: false,
  target: ["es2020"],
  legalComments: "none",
  banner: { js: banner },
  logLevel: "warning",
  keepNames: true,
};

async function build(options) {
  const result = await esbuild.build({ ...common, ...options });
  return result.outputFiles[0].text;
}

const outputs = {
  "dist/smartsocket.js": await build({ format: "esm" }),
  "dist/smartsocket.cjs": await build({ format: "cjs" }),
  // A classic script: `var SmartSocket = <namespace>` then the class itself; under CommonJS
  // (require) it is the module's export instead.
  "dist/smartsocket.min.js": await build({
    format: "iife",
    globalName: "SmartSocket",
    minify: true,
    footer: {
      js: 'SmartSocket=SmartSocket.SmartSocket;if(typeof module=="object"&&module.exports)module.exports=SmartSocket;',
    },
  }),
  "static/client.mjs": await build({ format: "esm", minify: true }),
};
outputs["static/client.js"] = outputs["dist/smartsocket.min.js"];

const target = (name) =>
  name.startsWith("static/") ? join(staticDir, name.slice("static/".length)) : join(root, name);

const gz = gzipSync(Buffer.from(outputs["static/client.js"]), { level: 9 }).length;
if (gz > SIZE_BUDGET) {
  console.error(`client.js is ${gz} bytes gzipped: over the ${SIZE_BUDGET}-byte budget`);
  process.exit(1);
}

if (process.argv.includes("--check")) {
  const stale = Object.keys(outputs)
    .filter((name) => name.startsWith("static/"))
    .filter((name) => !existsSync(target(name)) || readFileSync(target(name), "utf8") !== outputs[name]);
  if (stale.length) {
    console.error(
      `The committed client build is stale: ${stale.map((n) => relative(join(root, ".."), target(n))).join(", ")}\n` +
        "differ from a fresh build of js/src/smartsocket.js. Run `npm run build` in js/ and commit the result.",
    );
    process.exit(1);
  }
  console.log(`client build up to date (client.js: ${gz} bytes gzipped)`);
} else {
  for (const [name, text] of Object.entries(outputs)) {
    mkdirSync(dirname(target(name)), { recursive: true });
    writeFileSync(target(name), text);
  }
  console.log(`built ${Object.keys(outputs).join(", ")} (client.js: ${gz} bytes gzipped)`);
}
