// smartsocket.d.ts compiles under `tsc --strict` with the documented usage, and refuses misuse
// (js/types-test/usage.ts marks the lines that must fail with @ts-expect-error).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { it } from "node:test";
import { ROOT, requireFromJs } from "./helpers.mjs";

it("type-checks smartsocket.d.ts against js/types-test/usage.ts", () => {
  const tsc = requireFromJs.resolve("typescript/bin/tsc");
  const result = spawnSync(process.execPath, [tsc, "-p", join(ROOT, "js", "types-test", "tsconfig.json")], {
    encoding: "utf8",
    timeout: 60000,
  });
  assert.equal(result.status, 0, result.stdout + result.stderr);
});
