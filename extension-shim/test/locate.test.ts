import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  defaultWorkspaceRoot,
  locateSidecar,
  packageInfo,
  SidecarNotFoundError,
} from "../src/locate.ts";

const scratch = mkdtempSync(join(tmpdir(), "embark-locate-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

let n = 0;
function dir(): string {
  const d = join(scratch, String(n++));
  mkdirSync(d, { recursive: true });
  return d;
}
function exe(path: string, mode = 0o755): string {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, "#!/bin/sh\n");
  chmodSync(path, mode);
  return path;
}

test("EMBARK_SIDECAR_PATH wins over workspace builds and PATH", () => {
  const ws = dir();
  exe(join(ws, "target", "release", "embark-sidecar"));
  const bin = dir();
  exe(join(bin, "embark-sidecar"));
  const chosen = exe(join(dir(), "my-sidecar"));
  const found = locateSidecar({ env: { EMBARK_SIDECAR_PATH: chosen, PATH: bin }, workspaceRoot: ws });
  assert.deepEqual(found, { path: chosen, source: "env" });
});

test("EMBARK_SIDECAR_PATH pointing nowhere is an error, not a silent fallback", () => {
  const ws = dir();
  exe(join(ws, "target", "debug", "embark-sidecar"));
  const missing = join(ws, "nope", "embark-sidecar");
  assert.throws(
    () => locateSidecar({ env: { EMBARK_SIDECAR_PATH: missing, PATH: "" }, workspaceRoot: ws }),
    (err: unknown) => {
      assert.ok(err instanceof SidecarNotFoundError);
      assert.match(err.message, /EMBARK_SIDECAR_PATH is set to ".*nope\/embark-sidecar", but that is not an executable file/);
      assert.ok(err.message.includes(`cargo build --release -p embark-sidecar\` (run in ${ws})`), err.message);
      return true;
    },
  );
});

test("the newer of the workspace's release and debug builds is used", () => {
  const ws = dir();
  const debug = exe(join(ws, "target", "debug", "embark-sidecar"));
  assert.deepEqual(locateSidecar({ env: { PATH: "" }, workspaceRoot: ws }), { path: debug, source: "workspace" });
  const release = exe(join(ws, "target", "release", "embark-sidecar"));
  utimesSync(debug, new Date(1_000_000), new Date(1_000_000));
  assert.deepEqual(locateSidecar({ env: { PATH: "" }, workspaceRoot: ws }), { path: release, source: "workspace" });
  utimesSync(release, new Date(500_000), new Date(500_000));
  assert.deepEqual(
    locateSidecar({ env: { PATH: "" }, workspaceRoot: ws }),
    { path: debug, source: "workspace" },
    "a stale release build does not shadow a fresh debug build",
  );
});

test("PATH is the last resort; non-executable files and directories are skipped", () => {
  const ws = dir();
  exe(join(ws, "target", "release", "embark-sidecar"), 0o644); // not executable
  mkdirSync(join(ws, "target", "debug", "embark-sidecar"), { recursive: true }); // a directory
  const notExec = dir();
  exe(join(notExec, "embark-sidecar"), 0o644);
  const bin = dir();
  const onPath = exe(join(bin, "embark-sidecar"));
  const found = locateSidecar({ env: { PATH: [join(ws, "empty"), notExec, bin].join(":") }, workspaceRoot: ws });
  assert.deepEqual(found, { path: onPath, source: "path" });
});

test("when nothing is found the message says exactly how to build it", () => {
  const ws = dir();
  assert.throws(
    () => locateSidecar({ env: { PATH: dir() }, workspaceRoot: ws }),
    (err: unknown) => {
      assert.ok(err instanceof SidecarNotFoundError);
      assert.ok(err.message.includes(join(ws, "target", "release", "embark-sidecar")), err.message);
      assert.ok(err.message.includes(join(ws, "target", "debug", "embark-sidecar")), err.message);
      assert.ok(
        err.message.includes(
          `Build it with \`cargo build --release -p embark-sidecar\` (run in ${ws}), ` +
            "or set EMBARK_SIDECAR_PATH to the path of an embark-sidecar binary.",
        ),
        err.message,
      );
      return true;
    },
  );
});

test("an empty EMBARK_SIDECAR_PATH counts as unset", () => {
  const ws = dir();
  const debug = exe(join(ws, "target", "debug", "embark-sidecar"));
  assert.equal(locateSidecar({ env: { EMBARK_SIDECAR_PATH: "", PATH: "" }, workspaceRoot: ws }).path, debug);
});

test("the default workspace root is the embark checkout around extension-shim/", () => {
  const root = defaultWorkspaceRoot();
  assert.ok(existsSync(join(root, "extension-shim", "package.json")), root);
  assert.ok(existsSync(join(root, "Cargo.toml")), root);
});

test("packageInfo reads this package's name and version", () => {
  const info = packageInfo();
  assert.equal(info.name, "pi-embark");
  assert.match(info.version, /^\d+\.\d+\.\d+/);
});
