#!/usr/bin/env node
// smoke:bwrap-isolation — the bubblewrap sandbox with real bubblewrap, the
// real runner and real Pi. The scripted model makes one bash tool call that
// runs the task's prompt, so each prompt below probes the sandbox from the
// inside (`smoke/fake-model/README.md`). Checked:
// - two tasks at once (--max-tasks 2): neither sees the other's files or
//   bundle (credentials), the runner's home, the profiles, nor a third
//   task's workspace; nothing outside the task directory is written on the
//   host; /usr and /etc are read-only; /tmp is private; the sandbox is a
//   PID namespace of its own;
// - a process the task started in a session of its own dies when a
//   client cancels the task, when the runner aborts the task on its
//   timeout, when the runner shuts down
//   (SIGTERM), and when the runner is killed (SIGKILL) — without a restart.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomUUID } from "node:crypto";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requireBwrap, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { events, exited, killMarked, processesWith, submit, until, waitFinished } from "./lib/tasks.mjs";

const NAME = "smoke:bwrap-isolation";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-bwrap-");
const nonce = randomUUID().slice(0, 8);
const SLEEPER = `embark-sleeper-${nonce}`;
const SCRIPT = { turns: [{ tool_calls: [{ name: "bash", arguments: { command: "{{last_user_text}}" } }] }, { text: "probed" }] };

/** A bash script that probes the sandbox and writes `name=yes|no` lines to probe.txt. */
function probeScript({ home, profiles, spaces, other, tag }) {
  return `probe() { n=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo "$n=yes"; else echo "$n=no"; fi; }
echo "start=$(date +%s%N)" > probe.txt
echo "${tag}" > mine.txt
{
probe read_runner_home cat '${home}/secret.txt'
probe list_runner_home ls '${home}'
probe read_profile cat '${profiles}/default/auth.json'
probe list_profiles ls '${profiles}'
probe read_other_task cat '${spaces}/${other}/workspace/other.txt'
probe write_runner_home touch '${home}/escaped-${tag}'
probe write_spaces touch '${spaces}/escaped-${tag}'
probe write_usr touch /usr/escaped-${tag}
probe write_etc touch /etc/escaped-${tag}
probe write_tmp touch /tmp/escaped-${tag}
probe write_task touch ./inside.txt
probe own_bundle test -r "$PI_CODING_AGENT_DIR/models.json"
probe own_pid_namespace sh -c 'tr "\\0" " " < /proc/1/cmdline | grep -q bwrap && test "$(ls /proc | grep -c "^[0-9]")" -lt 30'
sleep 3
echo "tasks_seen=$(ls -A '${spaces}' | grep -v '^escaped-' | wc -l)"
echo "mine_seen=$(cat '${spaces}'/*/workspace/mine.txt 2>/dev/null | wc -l)"
echo "bundles_seen=$(ls -d '${spaces}'/*/bundle 2>/dev/null | wc -l)"
} >> probe.txt
echo "end=$(date +%s%N)" >> probe.txt
cat probe.txt`;
}

/** A prompt that leaves a process in a session of its own, then blocks. */
const sleeperScript = (tag) => `setsid bash -c 'exec -a ${SLEEPER}-${tag} sleep 600' < /dev/null > /dev/null 2>&1 &
sleep 600`;

async function main() {
  requirePi();
  requireBwrap();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, SCRIPT);
  const secrets = { client: "bwrap-client-secret-0123456789", enrollment: "bwrap-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);

  const home = join(dir, "runner-home");
  mkdirSync(home, { recursive: true });
  writeFileSync(join(home, "secret.txt"), "runner home secret\n");
  const profiles = join(dir, "profiles");
  writeProfile(profiles, "default", {
    "settings.json": PI_SETTINGS,
    "models.json": fakeModels(model.baseUrl),
    "auth.json": { anthropic: { type: "api_key", key: `sk-bwrap-${nonce}` } },
  });
  const spaces = join(dir, "spaces");
  // Another task's directory, with work in it (a previous runner's).
  const other = randomUUID();
  mkdirSync(join(spaces, other, "workspace"), { recursive: true });
  writeFileSync(join(spaces, other, "workspace", "other.txt"), "another task's work\n");

  // The probes get time enough on a loaded machine; the timeout run gets a short one.
  const runnerOptions = (timeoutSecs, log) => ({
    brokerUrl: broker.url,
    enrollmentSecret: secrets.enrollment,
    spaces,
    profiles,
    name: "bwrap-runner",
    args: ["--isolation", "bwrap", "--max-tasks", "2", "--task-timeout-secs", String(timeoutSecs)],
    env: { HOME: home },
    log,
  });
  let runner = startRunner(dir, bin, runnerOptions(120, "runner.log"));

  // Two tasks at once.
  const paths = { home, profiles, spaces, other };
  const [a, b] = await Promise.all(["a", "b"].map((tag) => submit(broker, secrets, repo, probeScript({ ...paths, tag: `${tag}-${nonce}` }))));
  const [doneA, doneB] = await Promise.all([a, b].map((t) => waitFinished(broker, secrets, t.id)));
  for (const done of [doneA, doneB]) {
    if (done.state !== "succeeded") fail(`probe task ${done.id} ended ${done.state}: ${done.outcome?.reason}; see ${dir}/runner.log`);
  }
  const probes = [a, b].map((t) => {
    const file = join(spaces, t.id, "workspace", "probe.txt");
    if (!existsSync(file)) fail(`${file} is missing`);
    return Object.fromEntries(readFileSync(file, "utf8").trim().split("\n").map((l) => l.split("=")));
  });
  const expected = {
    read_runner_home: "no",
    list_runner_home: "no",
    read_profile: "no",
    list_profiles: "no",
    read_other_task: "no",
    write_usr: "no",
    write_etc: "no",
    write_task: "yes",
    own_bundle: "yes",
    own_pid_namespace: "yes",
    tasks_seen: "1",
    mine_seen: "1",
    bundles_seen: "1",
  };
  probes.forEach((probe, i) => {
    for (const [key, want] of Object.entries(expected)) {
      if (probe[key] !== want) fail(`task ${"ab"[i]}: ${key}=${probe[key]}, expected ${want}: ${JSON.stringify(probe)}`);
    }
  });
  const [pa, pb] = probes.map((p) => [BigInt(p.start), BigInt(p.end)]);
  if (!(pa[0] < pb[1] && pb[0] < pa[1])) fail(`the two tasks did not run at the same time: ${pa} / ${pb}`);
  for (const t of [a, b]) {
    const tag = `${t === a ? "a" : "b"}-${nonce}`;
    for (const escaped of [join(home, `escaped-${tag}`), join(spaces, `escaped-${tag}`), `/usr/escaped-${tag}`, `/etc/escaped-${tag}`, `/tmp/escaped-${tag}`]) {
      if (existsSync(escaped)) fail(`the sandbox wrote ${escaped} on the host`);
    }
    if (!existsSync(join(spaces, t.id, "workspace", "inside.txt"))) fail("the sandbox could not write its own workspace");
    if (existsSync(join(spaces, t.id, "bundle"))) fail(`the bundle of ${t.id} outlived its task`);
  }
  step("two tasks at once: each saw only its own task directory and bundle; nothing written outside it");

  // Shutdown (SIGTERM) aborts the running task: the same.
  const stopped = await submit(broker, secrets, repo, sleeperScript("shutdown"));
  await until("the sleeper of the task at shutdown", () => processesWith(`${SLEEPER}-shutdown`).length > 0, 60_000);
  runner.child.kill("SIGTERM");
  const code = await exited(runner, 30_000);
  if (code !== 0) fail(`the runner exited ${code} after SIGTERM; see ${dir}/runner.log`);
  if (processesWith(`${SLEEPER}-shutdown`).length) fail("a task process outlived the runner's shutdown");
  const stoppedDone = await waitFinished(broker, secrets, stopped.id, 5_000);
  if (stoppedDone.outcome?.reason !== "runner shutting down") fail(`unexpected outcome ${JSON.stringify(stoppedDone.outcome)}`);
  step("shutdown: the task was reported and its processes are gone");

  runner = startRunner(dir, bin, runnerOptions(15, "runner2.log"));
  // A client's cancel stops the sandboxed run: its processes die with it.
  const cancelled = await submit(broker, secrets, repo, sleeperScript("cancel"));
  await until("the sleeper of the task to cancel", () => processesWith(`${SLEEPER}-cancel`).length > 0, 60_000);
  const cancel = await fetch(`${broker.url}/v1/tasks/${cancelled.id}/cancel`, { method: "POST", headers: { authorization: `Bearer ${secrets.client}` } });
  if (!cancel.ok) fail(`cancel: ${cancel.status} ${await cancel.text()}`);
  await until("the cancelled task's processes to die", () => processesWith(`${SLEEPER}-cancel`).length === 0, 10_000);
  const cancelledDone = await waitFinished(broker, secrets, cancelled.id, 30_000);
  if (cancelledDone.state !== "cancelled") fail(`the cancelled task ended ${cancelledDone.state}: ${JSON.stringify(cancelledDone.outcome)}`);
  step("cancel: the sandboxed task's detached process died, the task is cancelled");

  // The task timeout aborts the run: the sandbox's processes die with it.
  const timed = await submit(broker, secrets, repo, sleeperScript("timeout"));
  await until("the sleeper of the timed-out task", () => processesWith(`${SLEEPER}-timeout`).length > 0, 60_000);
  const timedDone = await waitFinished(broker, secrets, timed.id, 60_000);
  if (!timedDone.outcome?.reason?.includes("timed out")) fail(`expected a timeout, got ${JSON.stringify(timedDone.outcome)}`);
  await until("the timed-out task's processes to die", () => processesWith(`${SLEEPER}-timeout`).length === 0, 10_000);
  step("timeout: the task's detached process died with its sandbox");

  // SIGKILL of the runner: the guard and bwrap take the sandbox along, no restart needed.
  const killed = await submit(broker, secrets, repo, sleeperScript("kill"));
  await until("the sleeper of the task at SIGKILL", () => processesWith(`${SLEEPER}-kill`).length > 0, 60_000);
  runner.child.kill("SIGKILL");
  await exited(runner, 10_000);
  await until("the killed runner's task processes to die", () => processesWith(`${SLEEPER}-kill`).length === 0, 10_000);
  const evs = await events(broker, secrets, killed.id);
  if (!evs.some((e) => e.kind === "lifecycle" && e.payload.phase === "prompting")) fail("the killed task never ran");
  step("SIGKILL of the runner: the task's processes died with it");
}

run(main, {
  onFailure: () => {
    killMarked(SLEEPER);
    // Should a probe have escaped the sandbox, take back what it wrote on the host.
    for (const tag of ["a", "b"]) for (const d of ["/usr", "/etc", "/tmp"]) rmSync(join(d, `escaped-${tag}-${nonce}`), { force: true });
  },
});
