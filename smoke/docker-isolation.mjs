#!/usr/bin/env node
// smoke:docker-isolation — the runner's docker mode against the fake docker
// CLI (smoke/fake-docker/docker.mjs; no Docker engine runs here), which
// records every call and runs the "container" as real Pi on this machine.
// Checked: the exact `docker run` argv (name, label, mount, workdir, network,
// the runner binary mounted as the credential proxy's relay in front of Pi,
// user, dropped capabilities, env without secrets, the bundle's env file,
// image, Pi's arguments); a clean task leaves removal to --rm; a timed-out
// task's container is removed with `docker rm -f`; a container of a runner
// killed with SIGKILL is removed by the next runner at startup; no secret
// is ever in an argv; a root runner must name a non-root container user.

import { existsSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { spawnSync } from "node:child_process";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, emptyConfig, fakeModels, fixtureRepo, installFakeDocker, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { events, exited, submit, until, waitFinished } from "./lib/tasks.mjs";

const NAME = "smoke:docker-isolation";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-docker-");
const nonce = randomUUID().slice(0, 8);
const SCRIPT = { turns: [{ tool_calls: [{ name: "bash", arguments: { command: "{{last_user_text}}" } }] }, { text: "done in the container" }] };
const IMAGE = "embark-pi-runner:smoke";
const NETWORK = "embark-smoke-net";
const USER = "1000:1000";

async function main() {
  requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, SCRIPT);
  const secrets = { client: "docker-client-secret-0123456789", enrollment: "docker-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);
  const profiles = join(dir, "profiles");
  const profileDir = writeProfile(profiles, "default", {
    "settings.json": PI_SETTINGS,
    "models.json": fakeModels(model.baseUrl),
    "auth.json": { anthropic: { type: "api_key", key: `sk-docker-${nonce}` } },
  });
  writeFileSync(join(profileDir, "env"), `SMOKE_REGION=region-secret-${nonce}\n`);
  const spaces = join(dir, "spaces");
  const docker = installFakeDocker(dir);

  // A root runner has no non-root user of its own to default to.
  if (process.getuid() === 0) {
    const out = spawnSync(join(bin, "embark-runner"), ["--print-config", "--isolation", "docker", "--broker-url", broker.url, "--config", emptyConfig(dir, "root-check")], {
      env: { PATH: process.env.PATH, HOME: dir, EMBARK_RUNNER_ENROLLMENT_SECRET: "x" },
      encoding: "utf8",
    });
    if (out.status !== 1 || !out.stderr.includes("the task container user is not set")) fail(`a root runner was not refused: ${out.status} ${out.stderr}`);
    step("a root runner must name a non-root --docker-user");
  }

  // The clean task gets time enough on a loaded machine; the later ones a short timeout.
  const runnerOptions = (timeoutSecs, log) => ({
    brokerUrl: broker.url,
    enrollmentSecret: secrets.enrollment,
    spaces,
    profiles,
    name: "docker-runner",
    args: ["--isolation", "docker", "--docker-image", IMAGE, "--docker-network", NETWORK, "--docker-user", USER, "--task-timeout-secs", String(timeoutSecs)],
    env: { ...docker.env, LANG: "C.UTF-8", TERM: "xterm" },
    log,
  });
  let runner = startRunner(dir, bin, runnerOptions(120, "runner.log"));
  const runs = (id) => docker.calls().filter((c) => c.argv[0] === "run" && c.argv.includes(`embark-task-${id}`));
  const removals = (id) => docker.calls().filter((c) => c.argv[0] === "rm" && c.argv.includes(`embark-task-${id}`));

  // A clean task.
  const probe = `node -e 'fetch("http://127.0.0.1:${model.port}/health").then(() => console.log("model port reachable"), () => console.log("model port unreachable"))'`;
  const clean = await submit(broker, secrets, repo, `echo in-container > made.txt; test -n "$SMOKE_REGION" && echo region=set; ${probe}`);
  const cleanDone = await waitFinished(broker, secrets, clean.id);
  if (cleanDone.state !== "succeeded") fail(`the task ended ${cleanDone.state}: ${cleanDone.outcome?.reason}; see ${dir}/runner.log`);
  const task = join(spaces, clean.id);
  if (readFileSync(join(task, "workspace", "made.txt"), "utf8") !== "in-container\n") fail("Pi in the container did not write the workspace");
  const toolEnd = (await events(broker, secrets, clean.id)).find((e) => e.kind === "tool_end");
  if (!toolEnd?.payload.output.includes("region=set")) fail(`the profile's env did not reach the container: ${JSON.stringify(toolEnd)}`);
  // With bwrap, the fake engine gives the container a network of its own: Pi got out only through the relay.
  const ownNetwork = spawnSync("bwrap", ["--version"]).status === 0;
  if (ownNetwork && !toolEnd.payload.output.includes("model port unreachable")) fail(`the container reached this machine's 127.0.0.1: ${toolEnd.payload.output}`);
  const [run, ...more] = runs(clean.id);
  if (!run || more.length) fail(`expected one docker run for ${clean.id}: ${JSON.stringify(docker.calls())}`);
  const expected = [
    "run", "--rm", "-i", "--init",
    "--name", `embark-task-${clean.id}`,
    "--label", `embark.task=${clean.id}`,
    "--network", NETWORK,
    "--user", USER,
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
    "--mount", `type=bind,source=${task},target=/embark/task`,
    // A network of its own: the runner binary is the entry, relaying to the proxy's socket in the task dir.
    "--mount", `type=bind,source=${realpathSync(join(bin, "embark-runner"))},target=/run/embark/embark-runner,readonly`,
    "--workdir", "/embark/task/workspace",
    "--env", "LANG=C.UTF-8",
    "--env", "TERM=xterm",
    "--env", "HOME=/embark/task/home",
    "--env", "TMPDIR=/embark/task/tmp",
    "--env", "PI_CODING_AGENT_DIR=/embark/task/bundle/pi-agent",
    "--env", "PI_OFFLINE=1",
    "--env", `EMBARK_TASK_ID=${clean.id}`,
    "--env-file", join(task, "bundle", "env"),
    IMAGE,
    "/run/embark/embark-runner", "__proxy-relay", "--socket", "/embark/task/proxy.sock", "--port", "41917", "--",
    "pi", "--mode", "rpc", "--provider", "fake", "--model", "fake-model", "--session-dir", "/embark/task/session",
  ];
  if (JSON.stringify(run.argv) !== JSON.stringify(expected)) fail(`docker run argv:\n${JSON.stringify(run.argv)}\nexpected:\n${JSON.stringify(expected)}`);
  if (removals(clean.id).length) fail("a clean task's container is removed by --rm, not rm -f");
  if (existsSync(join(docker.state, `embark-task-${clean.id}.pid`))) fail("the clean task's container is still there");
  if (existsSync(join(task, "bundle"))) fail("the bundle outlived the task");
  step(`clean task: the exact docker run argv; --rm removed the container; the bundle is gone${ownNetwork ? "; in a network of its own, Pi's calls went through the relay and the proxy's socket" : ""}`);

  // A timed-out task: its container is stopped and removed.
  runner.child.kill("SIGTERM");
  if ((await exited(runner, 30_000)) !== 0) fail(`the runner did not stop cleanly; see ${dir}/runner.log`);
  runner = startRunner(dir, bin, runnerOptions(10, "runner2.log"));
  const timed = await submit(broker, secrets, repo, "sleep 600");
  const timedDone = await waitFinished(broker, secrets, timed.id, 60_000);
  if (!timedDone.outcome?.reason?.includes("timed out")) fail(`expected a timeout: ${JSON.stringify(timedDone.outcome)}`);
  const [removal] = removals(timed.id);
  if (!removal || JSON.stringify(removal.argv) !== JSON.stringify(["rm", "-f", `embark-task-${timed.id}`])) fail(`no docker rm -f for the timed-out task: ${JSON.stringify(docker.calls())}`);
  if (removal.at < runs(timed.id)[0].at) fail("rm -f came before the run");
  if (existsSync(join(docker.state, `embark-task-${timed.id}.pid`))) fail("the timed-out task's container is still running");
  step("timeout: the container was removed with docker rm -f");

  // A runner killed mid-task: the next one removes the container at startup.
  const crashed = await submit(broker, secrets, repo, "sleep 600");
  await until("the crashed task's container", () => existsSync(join(docker.state, `embark-task-${crashed.id}.pid`)), 60_000);
  runner.child.kill("SIGKILL");
  await exited(runner, 10_000);
  runner = startRunner(dir, bin, runnerOptions(10, "runner3.log"));
  await until("the next runner to remove the container", () => removals(crashed.id).length > 0, 30_000);
  await until("the container to be gone", () => !existsSync(join(docker.state, `embark-task-${crashed.id}.pid`)), 10_000);
  // The record is marked just after `docker rm -f` returns: wait for it (bounded).
  const readRecord = () => JSON.parse(readFileSync(join(spaces, crashed.id, "task.json"), "utf8"));
  await until("the crashed task's record to be marked abandoned", () => readRecord().state === "abandoned", 10_000).catch(() => {});
  const record = readRecord();
  if (record.state !== "abandoned" || record.container !== `embark-task-${crashed.id}`) fail(`the crashed task's record: ${JSON.stringify(record)}`);
  if (existsSync(join(spaces, crashed.id, "bundle"))) fail("the crashed task's bundle was not swept");
  step("SIGKILL: the next runner removed the container and the bundle");

  const argvs = JSON.stringify(docker.calls().map((c) => c.argv));
  for (const secret of [`sk-docker-${nonce}`, `region-secret-${nonce}`, "fake-key"]) if (argvs.includes(secret)) fail(`a secret is in a docker argv: ${secret}`);
  const logs = ["runner.log", "runner2.log", "runner3.log"].map((f) => readFileSync(join(dir, f), "utf8")).join("");
  for (const secret of [`sk-docker-${nonce}`, `region-secret-${nonce}`]) if (logs.includes(secret)) fail(`a secret is in the runner's log: ${secret}`);
  step("no secret in any docker argv or runner log");
}

run(main);
