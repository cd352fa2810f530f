#!/usr/bin/env node
// bench:task-start — task start overhead per isolation mode: from the claim
// to Pi's first RPC line, as the runner logs it (`since_claim_ms`). That
// span holds everything the runner does before Pi speaks: profile, task
// directory, bundle, clone (a local fixture), the guard, the sandbox, and
// Pi's own start-up. Side by side in one run, interleaved so machine load
// hits every mode alike:
// - real Pi: process and bwrap;
// - the scripted Pi of smoke/fake-pi.mjs (it answers at once, so the
//   runner's and the sandbox's own cost shows): process, bwrap, and docker
//   with the fake docker CLI (argv only: no engine runs here, so the figure
//   is the runner's side of a docker start, not a container's).
// Target: bwrap adds at most 50 ms over process. Pi's own start-up (about
// a second, with a spread of a few hundred ms on a shared machine) is in
// every figure, so the last line times the sandbox alone too: the guard
// with and without bwrap (the runner's own bwrap arguments) around
// /bin/true. BENCH_TASKS sets the tasks per mode and kind (default 8).

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { execFileSync, spawnSync } from "node:child_process";

import { smokeScript } from "./lib/process.mjs";
import { ROOT, buildBinaries, fakeModels, fixtureRepo, installFakeDocker, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { submit, until, waitFinished } from "./lib/tasks.mjs";

const NAME = "bench:task-start";
const TASKS = Number(process.env.BENCH_TASKS ?? 8);
const SANDBOX_RUNS = 30;
const TARGET_MS = 50;
const { dir, step, run } = smokeScript(NAME, "embark-bench-task-start-");

const MODES = [
  { name: "process", pi: "real", args: ["--isolation", "process"] },
  { name: "bwrap", pi: "real", args: ["--isolation", "bwrap"] },
  { name: "process", pi: "scripted", args: ["--isolation", "process"] },
  { name: "bwrap", pi: "scripted", args: ["--isolation", "bwrap"] },
  { name: "docker (argv only)", pi: "scripted", args: ["--isolation", "docker", "--docker-user", "1000:1000"], docker: true },
];

async function main() {
  requirePi();
  const bwrap = execFileSync("sh", ["-c", "command -v bwrap || true"], { encoding: "utf8" }).trim();
  if (!bwrap) throw new Error("bwrap is not installed: apt-get install bubblewrap");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, { turns: [{ text: "done" }] });
  const profiles = join(dir, "profiles");
  writeProfile(profiles, "default", { "settings.json": PI_SETTINGS, "models.json": fakeModels(model.baseUrl) });
  const docker = installFakeDocker(dir, { mode: "transcript" });

  // One broker and runner per mode, so each task goes where it is meant to.
  const stacks = [];
  for (const [i, mode] of MODES.entries()) {
    const label = `m${i}`;
    const mdir = join(dir, label);
    mkdirSync(mdir, { recursive: true });
    const secrets = { client: `${label}-client-secret-0123456789`, enrollment: `${label}-enrollment-secret-0123456789` };
    const broker = await startBroker(mdir, bin, secrets);
    const pi = mode.pi === "real" ? requirePi() : join(ROOT, "smoke", "fake-pi.mjs");
    startRunner(mdir, bin, {
      brokerUrl: broker.url,
      enrollmentSecret: secrets.enrollment,
      spaces: join(mdir, "spaces"),
      profiles,
      name: label,
      pi,
      args: [...mode.args, "--workspace-cleanup", "terminal", "--claim-wait-ms", "1000"],
      // Debug for the task module: its "starting Pi" line has the argv the sandbox-alone timing reuses.
      env: { ...(mode.docker ? docker.env : {}), EMBARK_LOG: "info,embark_runner::task=debug" },
    });
    stacks.push({ mode, broker, secrets, log: join(mdir, "runner.log"), samples: [] });
  }
  // A warm-up task each (disk caches, the first Pi's compile cache), not counted.
  for (const round of [-1, ...Array.from({ length: TASKS }, (_, i) => i)]) {
    for (const stack of stacks) {
      const task = await submit(stack.broker, stack.secrets, repo, "go");
      const done = await waitFinished(stack.broker, stack.secrets, task.id, 120_000);
      if (done.state !== "succeeded") throw new Error(`${stack.mode.name}/${stack.mode.pi}: task ${done.state}: ${done.outcome?.reason}; see ${stack.log}`);
      const ms = await until(`${task.id}'s timing in ${stack.log}`, () => {
        const line = readFileSync(stack.log, "utf8").split("\n").find((l) => l.includes("Pi's first RPC line") && l.includes(task.id));
        return line && Number(line.match(/since_claim_ms=(\d+)/)?.[1]);
      }, 10_000);
      if (round >= 0) stack.samples.push(ms);
    }
  }

  // The sandbox alone: guard + [bwrap] + /bin/true, with the runner's own bwrap arguments, interleaved.
  const bwrapArgs = sandboxArgs(join(dir, "m1", "runner.log"));
  const alone = { process: [], bwrap: [] };
  const guard = [join(bin, "embark-runner"), "__task-guard", "--parent", String(process.pid), "--"];
  for (let i = 0; i < SANDBOX_RUNS; i++) {
    for (const [mode, argv] of [["process", [...guard, "true"]], ["bwrap", [...guard, bwrap, ...bwrapArgs, "--", "true"]]]) {
      const started = process.hrtime.bigint();
      const out = spawnSync(argv[0], argv.slice(1), { cwd: dir, stdio: "ignore" });
      if (out.status !== 0) throw new Error(`${argv.join(" ")} exited ${out.status}`);
      alone[mode].push(Number(process.hrtime.bigint() - started) / 1e6);
    }
  }

  const stats = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return { median: s[Math.floor(s.length / 2)], min: s[0], max: s.at(-1) };
  };
  const rows = stacks.map((s) => ({ mode: s.mode.name, pi: s.mode.pi, ...stats(s.samples) }));
  step(`claim → Pi's first RPC line, ${TASKS} tasks per row (ms):`);
  step(`${"mode".padEnd(20)} ${"Pi".padEnd(9)} ${"median".padStart(7)} ${"min".padStart(6)} ${"max".padStart(6)}`);
  for (const r of rows) step(`${r.mode.padEnd(20)} ${r.pi.padEnd(9)} ${String(r.median).padStart(7)} ${String(r.min).padStart(6)} ${String(r.max).padStart(6)}`);
  const delta = (pi) => {
    const [p, b] = ["process", "bwrap"].map((m) => rows.find((r) => r.mode === m && r.pi === pi).median);
    return b - p;
  };
  for (const pi of ["real", "scripted"]) {
    const d = delta(pi);
    step(`bwrap over process (${pi} Pi, medians): ${d >= 0 ? "+" : ""}${d} ms (target ≤ ${TARGET_MS} ms): ${d <= TARGET_MS ? "met" : "MISSED"}`);
  }
  const [p, b] = [stats(alone.process), stats(alone.bwrap)];
  const fmt = (x) => x.toFixed(1);
  step(`the sandbox alone, guard + [bwrap] + true, ${SANDBOX_RUNS} runs (ms): process median ${fmt(p.median)} (min ${fmt(p.min)}), bwrap median ${fmt(b.median)} (min ${fmt(b.min)}): bwrap adds ${fmt(b.median - p.median)} ms`);
}

/**
 * The bwrap arguments the runner used for its first bwrap task (its debug
 * log line), that task's directory (removed since) replaced by a fresh one.
 */
function sandboxArgs(log) {
  const line = readFileSync(log, "utf8").split("\n").find((l) => l.includes("starting Pi") && l.includes("argv="));
  const argv = JSON.parse(line.slice(line.indexOf("argv=") + 5).trim());
  const args = argv.slice(1, argv.indexOf("--"));
  const taskRoot = args[args.indexOf("--bind") + 1];
  const fresh = join(dir, "alone-task");
  mkdirSync(join(fresh, "workspace"), { recursive: true });
  return args.map((a) => (a.startsWith(taskRoot) ? fresh + a.slice(taskRoot.length) : a));
}

run(main);
