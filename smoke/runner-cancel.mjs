#!/usr/bin/env node
// smoke:runner-cancel — cancelling a running task through every real
// component: laptop Pi (RPC mode, /embark extension) → embark-sidecar →
// embark-broker → the runner's control channel → the runner's Pi, busy in a
// bash tool call of `sleep 600` from the scripted fake model. `/embark
// cancel` must leave no process of the task alive (checked by PID: Pi, its
// task guard, the tool's shell) and the task `cancelled`; the latency from
// the cancel to the last of them gone is printed.

import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { pollStatus, submittedTaskId } from "./lib/pi-rpc-client.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requirePi, startBrokerAndRunner, startFakeModel, startLaptopPi } from "./lib/stack.mjs";
import { killMarked, processesWith, until } from "./lib/tasks.mjs";

const SCRIPT = {
  turns: [
    { tool_calls: [{ name: "bash", arguments: { command: "echo $$ > tool.pid; sleep 600" } }] },
    { text: "never reached: the task was cancelled" },
  ],
};

const { dir, step, fail, run } = smokeScript("smoke:runner-cancel", "embark-smoke-runner-cancel-");
const alive = (pid) => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.startsWith("Z");

async function main() {
  const piBin = requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, SCRIPT);
  const { broker, secrets, spaces } = await startBrokerAndRunner(dir, bin, {
    label: "cancel",
    profile: { "models.json": fakeModels(model.baseUrl) },
    runnerName: "cancel-runner",
  });
  step(`broker on ${broker.url}, fake model on ${model.baseUrl}`);

  const pi = startLaptopPi(dir, { piBin, bin, repo, broker, secrets });

  const submitted = await pi.embark(JSON.stringify("sleep for ten minutes"));
  const shortId = submittedTaskId(submitted);
  if (!shortId) fail(`submit did not name a task: ${submitted.notes.map((n) => n.message).join("\n")}`);
  step(`submitted task ${shortId}`);

  // The tool runs: its shell wrote its PID into the remote workspace.
  const taskName = await until("the task directory", () => (existsSync(spaces) ? readdirSync(spaces).find((d) => d.replaceAll("-", "").startsWith(shortId)) : null), 90_000);
  const taskDir = join(spaces, taskName);
  const pidFile = join(taskDir, "workspace", "tool.pid");
  const tool = await until("the tool's PID", () => (existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8").trim()) || null : null), 90_000);
  // Pi and its task guard carry the task directory on their command lines.
  const piPids = processesWith(taskDir);
  if (piPids.length === 0) fail(`no runner-side Pi process found for ${taskDir}`);
  step(`runner-side processes of the task (Pi under its guard) PIDs ${piPids.join(", ")}, tool shell PID ${tool}: running sleep 600`);

  const started = performance.now();
  const cancelled = await pi.embark(`cancel ${shortId}`);
  const answer = cancelled.notes.map((n) => n.message).join("\n");
  step(`cancel said: ${answer}`);
  if (!answer.startsWith(`Cancelling task ${shortId}`)) fail(`unexpected cancel answer: ${answer}`);
  await until("Pi and its tool stopped", () => ([...piPids, tool].every((pid) => !alive(pid)) ? true : null), 30_000);
  const latency = performance.now() - started;
  step(`cancel → Pi stopped: ${latency.toFixed(0)} ms (PIDs ${[...piPids, tool].join(", ")} gone)`);
  if (processesWith(taskDir).length) fail(`processes of the task are left: ${processesWith(taskDir).join(", ")}`);

  const { state, status } = await pollStatus(pi, shortId, 30_000);
  if (state !== "cancelled") fail(`task ended ${state}: ${status.notes.map((n) => n.message).join("\n")}`);
  const again = await pi.embark(`cancel ${shortId}`);
  const againText = again.notes.map((n) => n.message).join("\n");
  if (!againText.includes("was already cancelled")) fail(`a second cancel said: ${againText}`);
  step(`task ${shortId} cancelled; a second cancel says: ${againText}`);
}

run(main, { onFailure: () => killMarked(dir) });
