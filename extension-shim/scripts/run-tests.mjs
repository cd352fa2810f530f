#!/usr/bin/env node
// Runs the tests under Node 20, which cannot execute .ts: compile src/ and
// test/ with tsc (tsconfig.test.json) into .test-build/, then run
// `node --test` on the compiled test files.
//
//   npm test -w extension-shim                 all tests
//   npm test -w extension-shim -- render ndjson only files whose name contains one of the words

import { spawnSync } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const outDir = join(pkgDir, ".test-build");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");

rmSync(outDir, { recursive: true, force: true });
const build = spawnSync(process.execPath, [tsc, "-p", join(pkgDir, "tsconfig.test.json")], {
  cwd: pkgDir,
  stdio: "inherit",
});
if (build.status !== 0) {
  console.error("run-tests: the TypeScript build of the tests failed (see above)");
  process.exit(build.status ?? 1);
}

const filters = process.argv.slice(2);
const testDir = join(outDir, "test");
const files = readdirSync(testDir)
  .filter((f) => f.endsWith(".test.js"))
  .filter((f) => filters.length === 0 || filters.some((w) => f.includes(w)))
  .sort()
  .map((f) => join(testDir, f));
if (files.length === 0) {
  console.error(`run-tests: no test files match ${JSON.stringify(filters)}`);
  process.exit(1);
}

const run = spawnSync(process.execPath, ["--enable-source-maps", "--test", "--test-reporter=spec", ...files], {
  cwd: pkgDir,
  stdio: "inherit",
});
process.exit(run.status ?? 1);
