#!/usr/bin/env node
// smoke:pi-rpc — one task end to end through every real component:
// laptop Pi (RPC mode, /embark extension) → embark-sidecar → embark-broker
// (SQLite) → embark-runner → runner-side Pi → scripted fake model on 127.0.0.1.
// The runner's Pi makes a bash tool call that creates a file in the remote
// workspace; the task succeeds and `/embark status` shows the result text.

import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { stopAll } from "./lib/process.mjs";
import { FINISHED_STATES, pollStatus, submittedTaskId, taskState } from "./lib/pi-rpc-client.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requirePi, startBrokerAndRunner, startFakeModel, startLaptopPi } from "./lib/stack.mjs";

const PROMPT = "create remote.txt saying remote hello";
const FINAL_TEXT = "done: remote.txt now says remote hello";
const SCRIPT = {
  turns: [
    { tool_calls: [{ name: "bash", arguments: { command: "echo 'remote hello' > remote.txt && cat remote.txt" } }] },
    { text: FINAL_TEXT },
  ],
};

const dir = mkdtempSync(join(tmpdir(), "embark-smoke-pi-rpc-"));
const step = (msg) => process.stdout.write(`[smoke:pi-rpc] ${msg}\n`);
const fail = (msg) => {
  throw new Error(msg);
};

async function main() {
  const piBin = requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  step(`fixture repo ${repo.work} at ${repo.head.slice(0, 12)}`);

  const model = await startFakeModel(dir, SCRIPT);
  const { broker, secrets, spaces } = await startBrokerAndRunner(dir, bin, {
    label: "smoke",
    profile: { "models.json": fakeModels(model.baseUrl) },
    runnerName: "smoke-runner",
  });
  step(`broker on ${broker.url}, fake model on ${model.baseUrl}`);

  const pi = startLaptopPi(dir, { piBin, bin, repo, broker, secrets });

  const commands = await pi.call({ type: "get_commands" });
  if (!commands.response.data.commands.some((c) => c.name === "embark")) fail("/embark is not registered");
  step("laptop Pi has /embark");

  const submitted = await pi.embark(JSON.stringify(PROMPT));
  const submitText = submitted.notes.map((n) => n.message).join("\n");
  step(`submit said: ${submitText.split("\n")[0]}`);
  const shortId = submittedTaskId(submitted);
  if (!shortId) fail(`submit did not name a task: ${submitText}`);

  // Poll status (bounded) until the task's state row says it is finished.
  const { status, state } = await pollStatus(pi, shortId, 120_000);
  if (!FINISHED_STATES.includes(state)) fail(`task ${shortId} did not finish within 120 s; last state ${state}`);
  step(`status:\n${status.notes.map((n) => n.message).join("\n")}`);
  if (state !== "succeeded") fail(`task ended ${state}: ${JSON.stringify(status.messages)}`);
  const results = status.messages.filter((m) => m.customType === "embark-result");
  if (results.length !== 1) fail(`expected one embark-result message, got ${JSON.stringify(status.messages)}`);
  if (!results[0].content.includes(FINAL_TEXT)) fail(`the result message lacks ${JSON.stringify(FINAL_TEXT)}: ${results[0].content}`);

  // Asking again shows the status but does not add the result to the conversation a second time.
  const again = await pi.embark(`status ${shortId}`);
  if (taskState(again) !== "succeeded") fail("the second status lost the state");
  if (again.messages.length !== 0) fail(`the result was added again: ${JSON.stringify(again.messages)}`);
  step("result landed in the conversation once");

  const [fullId] = readdirSync(spaces).filter((d) => d.replaceAll("-", "").startsWith(shortId));
  if (!fullId) fail(`no task directory for ${shortId} under ${spaces}`);
  const created = join(spaces, fullId, "workspace", "remote.txt");
  if (!existsSync(created)) fail(`${created} was not created by the runner's Pi`);
  const content = readFileSync(created, "utf8");
  if (content !== "remote hello\n") fail(`${created} holds ${JSON.stringify(content)}`);
  if (existsSync(join(repo.work, "remote.txt"))) fail("the laptop's working tree was touched");
  step(`remote workspace file ${created} = ${JSON.stringify(content)}`);
  step("OK");
}

main()
  .then(async () => {
    await stopAll();
    if (!process.env.EMBARK_SMOKE_KEEP) rmSync(dir, { recursive: true, force: true });
    process.stdout.write("smoke: 1 passed, 0 failed\n");
  })
  .catch(async (err) => {
    await stopAll();
    process.stderr.write(`[smoke:pi-rpc] FAILED: ${err.stack ?? err}\nlogs are in ${dir}\n`);
    process.exit(1);
  });
