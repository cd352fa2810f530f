#!/usr/bin/env node
// smoke:runner-config — the runner's profile policies and start-up checks
// with the real binary, no task run: `embark-runner check` prints what each
// profile can run; profile.toml is versioned and its errors name the file
// and the key; an unreadable credential file is named, its content never
// printed; profiles and spaces must lie in the approved roots; labels and
// roots show in --print-config; a runner with a broken profile refuses to
// start and never claims the task waiting at the broker.

import { mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, emptyConfig, fixtureRepo, requirePi, startBroker, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { api, exited, submit } from "./lib/tasks.mjs";

const NAME = "smoke:runner-config";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-runner-config-");
const SECRET = "sk-never-printed-0123456789";

function runnerCmd(bin, profiles, args = [], extraEnv = {}) {
  const argv = ["--broker-url", "http://127.0.0.1:9", "--spaces", join(dir, "spaces"), "--profiles", profiles, "--pi", requirePi(), "--config", emptyConfig(dir, "check"), ...args];
  const out = spawnSync(join(bin, "embark-runner"), argv, {
    env: { PATH: process.env.PATH, HOME: dir, EMBARK_RUNNER_ENROLLMENT_SECRET: "x", ...extraEnv },
    encoding: "utf8",
    timeout: 30_000,
  });
  return { status: out.status, stdout: out.stdout, stderr: out.stderr, all: out.stdout + out.stderr };
}

function expectRefused(what, result, ...says) {
  if (result.status === 0) fail(`${what}: accepted: ${result.all}`);
  for (const text of says) if (!result.stderr.includes(text)) fail(`${what}: the error should say ${JSON.stringify(text)}: ${result.stderr}`);
  if (result.all.includes(SECRET)) fail(`${what}: a credential was printed: ${result.all}`);
}

async function main() {
  step("building binaries");
  const bin = buildBinaries();
  const profiles = join(dir, "profiles");
  const team = writeProfile(profiles, "team", { "settings.json": PI_SETTINGS, "auth.json": { anthropic: { type: "api_key", key: SECRET } } });
  writeFileSync(join(team, "profile.toml"), 'version = 1\nproviders = ["anthropic"]\nmodels = ["claude-*"]\nenv_allowlist = ["ANTHROPIC_API_KEY"]\nisolation = ["process", "bwrap"]\n');
  writeProfile(profiles, "default", { "settings.json": PI_SETTINGS });

  // A valid set: check prints each profile's policy and exits 0.
  let result = runnerCmd(bin, profiles, ["--labels", "gpu,eu", "check"]);
  if (result.status !== 0) fail(`check failed on a valid config: ${result.all}`);
  for (const text of ["configuration: ok", "isolation: process", "labels: gpu, eu", "team: providers anthropic; models claude-*", "default: providers *; models *", "pi: "]) {
    if (!result.stdout.includes(text)) fail(`check output lacks ${JSON.stringify(text)}:\n${result.stdout}`);
  }
  if (result.all.includes(SECRET)) fail("check printed a credential");
  step("check prints what each profile can run");

  // Versioning and keys.
  const policy = join(team, "profile.toml");
  const broken = [
    ["no version", 'providers = ["anthropic"]\n', "has no `version`"],
    ["a newer version", "version = 2\n", "has `version = 2`; this runner reads version 1"],
    ["an unknown key", 'version = 1\nmodel = ["x"]\n', "unknown key `model`"],
    ["a bad value", 'version = 1\nisolation = ["vm"]\n', "bad `isolation`"],
  ];
  for (const [what, text, says] of broken) {
    writeFileSync(policy, text);
    expectRefused(what, runnerCmd(bin, profiles, ["check"]), says, policy);
  }
  step(`broken profile.toml refused, naming file and key (${broken.length} cases)`);
  // A valid policy this mode cannot run is reported, not an error (another profile runs).
  writeFileSync(policy, 'version = 1\nnetwork = "none"\n');
  result = runnerCmd(bin, profiles, ["check"]);
  if (result.status !== 0 || !result.stdout.includes('team: not runnable here: auth profile "team" needs a task without network')) fail(`network = "none" under process: ${result.all}`);
  step("a profile the isolation mode cannot run is reported by check");
  writeFileSync(policy, "version = 1\n");

  // An unreadable credential file: named, never read out.
  const auth = join(team, "auth.json");
  rmSync(auth);
  symlinkSync(auth, auth); // a loop: unreadable even for root
  expectRefused("an unreadable auth.json", runnerCmd(bin, profiles, ["check"]), auth, "its content is not shown");
  rmSync(auth);
  writeFileSync(auth, JSON.stringify({ anthropic: { type: "api_key", key: SECRET } }));
  step("an unreadable credential file is named, its content never shown");

  // Approved roots.
  const elsewhere = join(dir, "elsewhere");
  mkdirSync(elsewhere, { recursive: true });
  expectRefused("profiles outside the roots", runnerCmd(bin, profiles, ["--approved-roots", elsewhere, "check"]), "lies outside the approved roots");
  expectRefused("a relative root", runnerCmd(bin, profiles, ["--approved-roots", "relative/dir", "check"]), "approved_roots");
  symlinkSync(elsewhere, join(profiles, "escape"));
  const roots = `${profiles},${join(dir, "spaces")}`;
  expectRefused("a profile symlinked out of the roots", runnerCmd(bin, profiles, ["--approved-roots", roots, "check"]), '"escape" lies outside the approved roots');
  rmSync(join(profiles, "escape"));
  result = runnerCmd(bin, profiles, ["--approved-roots", roots, "check"]);
  if (result.status !== 0) fail(`profiles inside the roots were refused: ${result.all}`);
  step("spaces and profiles must lie in the approved roots (symlinks followed)");

  // --print-config shows the new knobs with their sources.
  result = runnerCmd(bin, profiles, ["--print-config"], { EMBARK_RUNNER_LABELS: "gpu", EMBARK_RUNNER_APPROVED_ROOTS: dir });
  for (const key of ["labels", "approved_roots"]) if (!result.stdout.includes(key)) fail(`--print-config lacks ${key}: ${result.stdout}`);
  step("--print-config shows labels and approved_roots");

  // A broken profile stops the runner before it enrolls or claims.
  const secrets = { client: "config-client-secret-0123456789", enrollment: "config-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);
  const repo = fixtureRepo(join(dir, "repo"));
  const queued = await submit(broker, secrets, repo, "never claimed");
  writeFileSync(policy, "version = 7\n");
  const runner = startRunner(dir, bin, { brokerUrl: broker.url, enrollmentSecret: secrets.enrollment, spaces: join(dir, "spaces"), profiles });
  const code = await exited(runner);
  if (code === 0) fail("a runner with a broken profile started");
  const task = await api(broker.url, secrets.client, `/v1/tasks/${queued.id}`);
  if (task.state !== "queued" || task.attempt !== 0) fail(`the queued task was touched: ${task.state}, attempt ${task.attempt}`);
  const fleet = await api(broker.url, secrets.client, "/v1/runners");
  if (fleet.runners.length !== 0) fail(`the broken runner enrolled: ${JSON.stringify(fleet)}`);
  step("a broken profile stops the runner before it enrolls; the queued task stays queued");
}

run(main);
