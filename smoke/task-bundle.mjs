#!/usr/bin/env node
// smoke:task-bundle — task-local bundles with the real runner and real Pi
// (process isolation), the scripted model running each prompt as a bash
// command. Checked:
// - materialisation: Pi's PI_CODING_AGENT_DIR is the task's own bundle,
//   holding its profile's settings and a models.json that points the
//   provider at the credential proxy with a token (mode 600), no auth.json
//   and no key; the env file holds the profile's variables but the secret
//   ones; metadata (profile, provider, model, hashes) with no secret in it,
//   in the task's record, the runner's log or the events;
// - task-unique: two tasks at once (--max-tasks 2), with two profiles,
//   each get their own bundle and only their profile;
// - cleanup: a bundle is gone when its task ends; workspace_cleanup =
//   success removes a succeeded task's directory and keeps a failed one;
// - after a crash: SIGKILL of the runner leaves no task process alive (its
//   guards end them); SIGKILL of runner and guard together leaves a task
//   process orphaned, and the next runner ends it at startup, removes the
//   bundle and marks the task abandoned.

import { createHash, randomUUID } from "node:crypto";
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { events, exited, killMarked, processesWith, submit, until, waitFinished } from "./lib/tasks.mjs";

const NAME = "smoke:task-bundle";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-bundle-");
const nonce = randomUUID().slice(0, 8);
const SLEEPER = `embark-bundle-sleeper-${nonce}`;
const SCRIPT = { turns: [{ tool_calls: [{ name: "bash", arguments: { command: "{{last_user_text}}" } }] }, { text: "looked" }] };
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/** Reports what Pi's config dir holds (names, modes, hashes), never the content. */
const INSPECT = `sleep 2
{
echo "agent_dir=$PI_CODING_AGENT_DIR"
echo "agent_files=$(ls -A "$PI_CODING_AGENT_DIR" | sort | tr '\\n' ' ')"
echo "bundle_files=$(ls -A "$(dirname "$PI_CODING_AGENT_DIR")" | sort | tr '\\n' ' ')"
echo "auth=$(tr -d ' \\n' < "$PI_CODING_AGENT_DIR/auth.json")"
echo "proxy_token=$(grep -c embark-proxy- "$PI_CODING_AGENT_DIR/models.json")"
echo "models_mode=$(stat -c %a "$PI_CODING_AGENT_DIR/models.json")"
echo "keys_in_bundle=$(grep -rl sk- "$(dirname "$PI_CODING_AGENT_DIR")" | wc -l)"
echo "env_mode=$(stat -c %a "$(dirname "$PI_CODING_AGENT_DIR")/env")"
echo "token_sha=$(printf %s "$SMOKE_TOKEN" | sha256sum | cut -d' ' -f1)"
echo "region_sha=$(printf %s "$SMOKE_REGION" | sha256sum | cut -d' ' -f1)"
} > inspect.txt
sleep 2
exit 3`;

const sleeperScript = (tag) => `setsid bash -c 'exec -a ${SLEEPER}-${tag} sleep 600' < /dev/null > /dev/null 2>&1 &
sleep 600`;

async function main() {
  requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, SCRIPT);
  const secrets = { client: "bundle-client-secret-0123456789", enrollment: "bundle-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);
  const profiles = join(dir, "profiles");
  const secret = (name) => `sk-${name}-${nonce}`;
  const token = (name) => `tok-${name}-${nonce}`;
  const region = (name) => `region-${name}-${nonce}`;
  for (const name of ["alpha", "beta"]) {
    const profileDir = writeProfile(profiles, name, {
      "settings.json": PI_SETTINGS,
      "models.json": fakeModels(model.baseUrl),
      "auth.json": { anthropic: { type: "api_key", key: secret(name) } },
    });
    writeFileSync(join(profileDir, "env"), `SMOKE_TOKEN=${token(name)}\nSMOKE_REGION=${region(name)}\n`);
    writeFileSync(join(profileDir, "notes.txt"), "not a Pi file: never materialised\n");
  }
  const spaces = join(dir, "spaces");
  const runnerOptions = (log) => ({
    brokerUrl: broker.url,
    enrollmentSecret: secrets.enrollment,
    spaces,
    profiles,
    name: "bundle-runner",
    args: ["--max-tasks", "2", "--workspace-cleanup", "success"],
    log,
  });
  let runner = startRunner(dir, bin, runnerOptions("runner.log"));

  // Two tasks at once, with two profiles.
  const tasks = {};
  for (const name of ["alpha", "beta"]) tasks[name] = await submit(broker, secrets, repo, INSPECT, { profile: name });
  // Both tasks run at once: both bundles are there in the same look.
  const seenWhileRunning = await until("both bundles at once", () => {
    const bundles = Object.entries(tasks).map(([name, task]) => [name, join(spaces, task.id, "bundle")]);
    if (!bundles.every(([, bundle]) => existsSync(join(bundle, "bundle.json")) && existsSync(join(bundle, "pi-agent", "models.json")))) return null;
    try {
      return Object.fromEntries(
        bundles.map(([name, bundle]) => [
          name,
          {
            metadata: readFileSync(join(bundle, "bundle.json"), "utf8"),
            files: readdirSync(join(bundle, "pi-agent")).sort(),
            authMode: (statSync(join(bundle, "pi-agent", "models.json")).mode & 0o777).toString(8),
          },
        ]),
      );
    } catch {
      return null; // a task ended meanwhile; look again
    }
  });
  const done = {};
  for (const [name, task] of Object.entries(tasks)) done[name] = await waitFinished(broker, secrets, task.id);

  for (const name of ["alpha", "beta"]) {
    const task = tasks[name];
    const space = join(spaces, task.id);
    if (done[name].state !== "succeeded") fail(`${name} ended ${done[name].state}: ${done[name].outcome?.reason}`);
    // workspace_cleanup = success: the directory went with the verdict; what Pi saw was reported in the tool output.
    if (existsSync(space)) fail(`${space} should be removed (workspace_cleanup = success)`);
    const toolEnd = (await events(broker, secrets, task.id)).find((e) => e.kind === "tool_end");
    if (!toolEnd) fail(`${name}: no tool_end`);
    const seen = seenWhileRunning[name];
    if (seen.files.join(" ") !== "models.json settings.json") fail(`${name}: pi-agent holds ${seen.files}`);
    if (seen.authMode !== "600") fail(`${name}: models.json has mode ${seen.authMode}`);
    const meta = JSON.parse(seen.metadata);
    if (meta.profile !== name || meta.provider !== "fake" || meta.model !== "fake-model") fail(`${name}: metadata ${seen.metadata}`);
    const paths = meta.files.map((f) => f.path).join(" ");
    if (paths !== "pi-agent/models.json pi-agent/settings.json env") fail(`${name}: materialised ${paths}`);
    if (!meta.files.every((f) => /^blake3:[0-9a-f]{64}$/.test(f.hash) && f.bytes > 0)) fail(`${name}: hashes ${seen.metadata}`);
    if (JSON.stringify(meta.env) !== JSON.stringify(["SMOKE_REGION"])) fail(`${name}: env names ${meta.env}`);
    for (const other of ["alpha", "beta"]) {
      if (seen.metadata.includes(secret(other)) || seen.metadata.includes(token(other))) fail(`${name}: a secret is in bundle.json`);
    }
  }
  if (seenWhileRunning.alpha.metadata === seenWhileRunning.beta.metadata) fail("the two bundles are the same");
  step("two tasks at once, two profiles: each bundle held only its own profile, with metadata and no secret");

  // What Pi itself saw, from a kept (failed) task: make it fail so the directory stays.
  const inspect = await submit(broker, secrets, repo, `${INSPECT.replace("exit 3", "kill -9 $PPID")}`, { profile: "beta" });
  const failed = await waitFinished(broker, secrets, inspect.id);
  if (failed.state !== "failed" || !failed.outcome?.reason?.includes("Pi exited")) fail(`expected Pi killed: ${JSON.stringify(failed.outcome)}`);
  const kept = join(spaces, inspect.id);
  if (!existsSync(kept)) fail("a failed task's directory is kept under workspace_cleanup = success");
  if (existsSync(join(kept, "bundle"))) fail("the failed task's bundle outlived it");
  const seen = Object.fromEntries(readFileSync(join(kept, "workspace", "inspect.txt"), "utf8").trim().split("\n").map((l) => l.split("=")));
  const want = {
    agent_dir: join(kept, "bundle", "pi-agent"),
    // Pi makes an empty auth.json of its own at start.
    agent_files: "auth.json models.json settings.json ",
    auth: "{}",
    bundle_files: "bundle.json env pi-agent ",
    proxy_token: "1",
    models_mode: "600",
    keys_in_bundle: "0",
    env_mode: "600",
    token_sha: sha256(""),
    region_sha: sha256(region("beta")),
  };
  for (const [key, value] of Object.entries(want)) if (seen[key] !== value) fail(`Pi saw ${key}=${seen[key]}, expected ${value}`);
  const record = JSON.parse(readFileSync(join(kept, "task.json"), "utf8"));
  if (record.state !== "finished" || record.result !== "failed" || record.bundle?.profile !== "beta") fail(`record ${JSON.stringify(record)}`);
  step("Pi's config dir was its task's bundle: the proxy's token, no key, no secret variable; a failed task's directory is kept, its bundle is not");

  // SIGKILL of the runner: the guards end the task's processes at once.
  const killed = await submit(broker, secrets, repo, sleeperScript("runner"), { profile: "alpha" });
  await until("the first sleeper", () => processesWith(`${SLEEPER}-runner`).length > 0, 60_000);
  runner.child.kill("SIGKILL");
  await exited(runner, 10_000);
  await until("the task's processes to die with the runner", () => processesWith(`${SLEEPER}-runner`).length === 0, 10_000);
  if (!existsSync(join(spaces, killed.id, "bundle"))) fail("a killed runner cannot have removed its bundle");
  step("SIGKILL of the runner: no task process outlived it");

  // SIGKILL of runner and guard: the next runner ends the orphan at startup.
  runner = startRunner(dir, bin, runnerOptions("runner2.log"));
  await until("the killed task's bundle swept", () => !existsSync(join(spaces, killed.id, "bundle")), 30_000);
  const orphaned = await submit(broker, secrets, repo, sleeperScript("guard"), { profile: "alpha" });
  await until("the second sleeper", () => processesWith(`${SLEEPER}-guard`).length > 0, 60_000);
  const guards = processesWith("__task-guard").filter((pid) => readFileSync(`/proc/${pid}/environ`, "utf8").includes(`EMBARK_TASK_ID=${orphaned.id}`));
  if (!guards.length) fail("no guard found for the task");
  // The guards first: once the runner is gone they would end their processes at once.
  for (const pid of guards) process.kill(pid, "SIGKILL");
  runner.child.kill("SIGKILL");
  await exited(runner, 10_000);
  await new Promise((r) => setTimeout(r, 500));
  if (!processesWith(`${SLEEPER}-guard`).length) fail("the orphan should outlive a killed guard (nothing else would end it)");
  runner = startRunner(dir, bin, runnerOptions("runner3.log"));
  await until("the next runner to end the orphan", () => processesWith(`${SLEEPER}-guard`).length === 0, 30_000);
  await until("the orphaned task's bundle swept", () => !existsSync(join(spaces, orphaned.id, "bundle")), 10_000);
  // The sweep marks the record just after it ended the processes.
  const recordState = () => JSON.parse(readFileSync(join(spaces, orphaned.id, "task.json"), "utf8")).state;
  await until("the orphaned task's record marked abandoned", () => recordState() === "abandoned", 10_000).catch(() =>
    fail(`the orphaned task's record says ${recordState()}`),
  );
  step("SIGKILL of runner and guard: the next runner ended the task's processes and swept its bundle");

  const logs = ["runner.log", "runner2.log", "runner3.log"].map((f) => readFileSync(join(dir, f), "utf8")).join("");
  const stored = JSON.stringify(await Promise.all([...Object.values(tasks), inspect, killed, orphaned].map((t) => events(broker, secrets, t.id))));
  for (const name of ["alpha", "beta"]) {
    for (const value of [secret(name), token(name)]) {
      if (logs.includes(value)) fail(`${value} is in the runner's log`);
      if (stored.includes(value)) fail(`${value} is in the task events`);
    }
  }
  step("no secret in the runner's logs or the events");
}

run(main, { onFailure: () => killMarked(SLEEPER) });
