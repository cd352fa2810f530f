// The extension inside real Pi 0.73.1 (`pi --mode rpc`), isolated with a
// temp PI_CODING_AGENT_DIR and PI_OFFLINE=1.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test, type TestContext } from "node:test";
import { alive, childPids, isolatedDirs, type Json, PiRpc, piEnv } from "./pi-rpc.ts";
import { piBin, requireSidecar, shimDir, within } from "./support.ts";

function needPi(t: TestContext): boolean {
  if (existsSync(piBin)) return true;
  if (process.env.EMBARK_REQUIRE_SIDECAR === "1") throw new Error(`${piBin} is missing: run npm ci at the repo root`);
  t.skip(`${piBin} is missing: run npm ci at the repo root`);
  return false;
}

function cleanup(t: TestContext, agentDir: string): void {
  t.after(() => rmSync(dirname(agentDir), { recursive: true, force: true }));
}

const isNotify = (m: Json): boolean => m.type === "extension_ui_request" && m.method === "notify";

function embarkCommand(response: Json): Json | undefined {
  const data = response.data as { commands?: Json[] } | undefined;
  return data?.commands?.find((c) => c.name === "embark");
}

test("pi -e loads the extension and lists /embark", async (t) => {
  if (!needPi(t)) return;
  const { agentDir, cwd } = isolatedDirs();
  cleanup(t, agentDir);
  const pi = new PiRpc(["-e", shimDir], { cwd, env: piEnv(agentDir) });
  try {
    pi.send({ id: "c", type: "get_commands" });
    const res = await pi.response("c");
    assert.equal(res.success, true);
    const cmd = embarkCommand(res);
    assert.ok(cmd, `no embark in ${JSON.stringify(res)}`);
    assert.equal(cmd.source, "extension");
    assert.match(String(cmd.description), /remote runner/);
    assert.equal((cmd.sourceInfo as Json).path, join(shimDir, "src", "index.ts"));
  } finally {
    assert.equal((await pi.close()).code, 0, pi.stderr.lastLines().join("\n"));
  }
});

test("/embark without a sidecar notifies an error that says how to build it", async (t) => {
  if (!needPi(t)) return;
  const { agentDir, cwd } = isolatedDirs();
  cleanup(t, agentDir);
  const missing = join(cwd, "no-such-sidecar");
  const pi = new PiRpc(["-e", shimDir], { cwd, env: piEnv(agentDir, { EMBARK_SIDECAR_PATH: missing }) });
  try {
    pi.send({ id: "h", type: "prompt", message: "/embark help" });
    const res = await pi.response("h");
    assert.equal(res.success, true);
    const note = await pi.waitFor("a notify", isNotify);
    assert.equal(note.notifyType, "error");
    assert.match(String(note.message), /EMBARK_SIDECAR_PATH is set to ".*no-such-sidecar"/);
    assert.ok(String(note.message).includes("cargo build --release -p embark-sidecar"), String(note.message));
    assert.ok(!pi.messages.some((m) => m.type === "extension_error"), "the handler must not throw");
  } finally {
    await pi.close();
  }
});

test("/embark through pi: help, a usage error, one sidecar reused, stopped on new session and on quit", async (t) => {
  if (!needPi(t)) return;
  const sidecar = requireSidecar(t);
  if (sidecar === undefined) return;
  const { agentDir, cwd } = isolatedDirs();
  cleanup(t, agentDir);
  const pi = new PiRpc(["-e", shimDir], { cwd, env: piEnv(agentDir, { EMBARK_SIDECAR_PATH: sidecar }) });
  let sidecarPids: number[] = [];
  try {
    pi.send({ id: "h", type: "prompt", message: "/embark help" });
    const res = await pi.response("h", 30_000);
    assert.equal(res.success, true);
    const notes = pi.messages.filter(isNotify);
    assert.ok(notes.length >= 1, JSON.stringify(pi.messages));
    assert.equal(notes[0]?.notifyType, "info", JSON.stringify(notes[0]));
    assert.match(String(notes[0]?.message), /\/embark/);
    assert.ok(!pi.messages.some((m) => m.type === "extension_error"), JSON.stringify(pi.messages));

    // The second command reuses the same sidecar process.
    const before = (await childPids(pi.child.pid ?? -1)).filter((c) => c.comm === "embark-sidecar");
    assert.equal(before.length, 1, JSON.stringify(before));
    pi.send({ id: "h2", type: "prompt", message: "/embark help" });
    await pi.response("h2", 30_000);
    const afterSecond = (await childPids(pi.child.pid ?? -1)).filter((c) => c.comm === "embark-sidecar");
    assert.deepEqual(afterSecond, before);
    sidecarPids = before.map((c) => c.pid);

    // A usage error from the sidecar is an error notification.
    const seen = pi.messages.length;
    pi.send({ id: "u", type: "prompt", message: "/embark stauts  " });
    await pi.response("u", 30_000);
    const err = pi.messages.slice(seen).find(isNotify);
    assert.equal(err?.notifyType, "error", JSON.stringify(err));
    assert.match(String(err?.message), /^unknown command "stauts"/);

    // A new session fires session_shutdown: the sidecar is stopped while pi runs on,
    // and the next /embark starts a fresh one.
    pi.send({ id: "n", type: "new_session" });
    assert.equal((await pi.response("n")).success, true);
    for (const pid of sidecarPids) await waitGone(pid);
    pi.send({ id: "h3", type: "prompt", message: "/embark help" });
    await pi.response("h3", 30_000);
    const fresh = (await childPids(pi.child.pid ?? -1)).filter((c) => c.comm === "embark-sidecar");
    assert.equal(fresh.length, 1, JSON.stringify(fresh));
    assert.ok(!sidecarPids.includes(fresh[0]?.pid ?? -1), "a new sidecar process");
    sidecarPids = fresh.map((c) => c.pid);
  } finally {
    const exit = await pi.close();
    assert.equal(exit.code, 0, pi.stderr.lastLines().join("\n"));
  }
  for (const pid of sidecarPids) await waitGone(pid);
});

async function waitGone(pid: number): Promise<void> {
  await within(
    5_000,
    `sidecar ${pid} to exit`,
    (async () => {
      while (await alive(pid)) await new Promise((r) => setTimeout(r, 50));
    })(),
  );
}

test("pi install <dir> (isolated agent dir) registers /embark as a package", async (t) => {
  if (!needPi(t)) return;
  const { agentDir, cwd } = isolatedDirs();
  cleanup(t, agentDir);
  const env = piEnv(agentDir);
  const install = spawnSync(piBin, ["install", shimDir], { cwd, env, encoding: "utf8", timeout: 60_000 });
  assert.equal(install.status, 0, `${install.stdout}\n${install.stderr}`);
  const settings = JSON.parse(readFileSync(join(agentDir, "settings.json"), "utf8")) as { packages?: string[] };
  assert.ok(Array.isArray(settings.packages) && settings.packages.length === 1, JSON.stringify(settings));
  assert.equal(resolve(agentDir, settings.packages[0] as string), shimDir);

  const pi = new PiRpc([], { cwd, env });
  try {
    pi.send({ id: "c", type: "get_commands" });
    const cmd = embarkCommand(await pi.response("c"));
    assert.ok(cmd, "embark is not listed after pi install");
    const info = cmd.sourceInfo as Json;
    assert.equal(info.origin, "package");
    assert.equal(info.scope, "user");
  } finally {
    await pi.close();
  }
});
