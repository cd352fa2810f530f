#!/usr/bin/env node
// smoke:results — the whole loop of a result through every real component:
// laptop Pi (RPC mode, /embark extension) → embark-sidecar → embark-broker →
// the runner's real Pi, whose scripted fake model edits a tracked file and
// creates one; then `/embark diff` shows git's diff as a conversation
// message and `/embark apply` writes both files into the laptop's working
// tree, while the laptop's own uncommitted edit of another file stays and
// HEAD does not move. Then `/embark follow` continues the task (D28): the
// fake model's turn refuses a request without the parent's prompt and
// answer, the follow-up's diff is what it added, `--from-root` the chain,
// and its apply lands on top of the parent's.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { pollStatus, submittedTaskId } from "./lib/pi-rpc-client.mjs";
import { buildBinaries, fakeModels, fixtureRepo, git, requirePi, startBrokerAndRunner, startFakeModel, startLaptopPi } from "./lib/stack.mjs";
import { killMarked } from "./lib/tasks.mjs";

const SCRIPT = {
  turns: [
    { tool_calls: [{ name: "bash", arguments: { command: "echo 'made remotely' > remote.txt && echo 'edited remotely' >> README.md" } }] },
    { text: "done: two files" },
    {
      tool_calls: [{ name: "bash", arguments: { command: "test -f remote.txt && echo 'from the follow-up' > follow.txt" } }],
      expect_in_request: ["make remote.txt and edit the README", "done: two files"],
    },
    { text: "done: the follow-up" },
  ],
};

const { dir, step, fail, run } = smokeScript("smoke:results", "embark-smoke-results-");
const said = (view) => view.notes.map((n) => n.message).join("\n");

async function main() {
  const piBin = requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, SCRIPT);
  const { broker, secrets } = await startBrokerAndRunner(dir, bin, {
    label: "results",
    profile: { "models.json": fakeModels(model.baseUrl) },
    runnerName: "results-runner",
  });
  const pi = startLaptopPi(dir, { piBin, bin, repo, broker, secrets });
  const readme = readFileSync(join(repo.work, "README.md"), "utf8");

  const submitted = await pi.embark(JSON.stringify("make remote.txt and edit the README"));
  const id = submittedTaskId(submitted);
  if (!id) fail(`submit did not name a task: ${said(submitted)}`);
  step(`submitted task ${id}`);
  const { state, status } = await pollStatus(pi, id, 120_000);
  if (state !== "succeeded") fail(`task ended ${state}: ${said(status)}`);
  if (!said(status).includes("2 file(s) changed")) fail(`status does not name the changes: ${said(status)}`);

  // The laptop moved on meanwhile: an uncommitted file of its own.
  writeFileSync(join(repo.work, "local.txt"), "the laptop's own edit\n");
  const head = git(repo.work, "rev-parse", "HEAD");

  const diff = await pi.embark(`diff ${id}`);
  const message = diff.messages.find((m) => m.customType === "embark-diff");
  if (!message) fail(`no diff message: ${said(diff)}`);
  const content = typeof message.content === "string" ? message.content : JSON.stringify(message.content);
  if (!content.includes("+made remotely") || !content.includes("+edited remotely")) fail(`the diff lacks the changes: ${content}`);
  step(`diff: ${said(diff)}`);

  const dry = await pi.embark(`apply ${id} --dry-run`);
  if (!said(dry).includes("Dry run")) fail(`dry run said: ${said(dry)}`);
  const applied = await pi.embark(`apply ${id}`);
  if (!said(applied).startsWith(`Applied task ${id}`)) fail(`apply said: ${said(applied)}`);
  step(`apply: ${said(applied).split("\n")[0]}`);

  const remote = readFileSync(join(repo.work, "remote.txt"), "utf8");
  if (remote !== "made remotely\n") fail(`remote.txt is ${JSON.stringify(remote)}`);
  if (readFileSync(join(repo.work, "README.md"), "utf8") !== `${readme}edited remotely\n`) fail("README.md was not edited as on the runner");
  if (readFileSync(join(repo.work, "local.txt"), "utf8") !== "the laptop's own edit\n") fail("the local edit was touched");
  if (git(repo.work, "rev-parse", "HEAD") !== head) fail("HEAD moved");
  if (git(repo.work, "diff", "--cached", "--name-only") !== "") fail("the index was written");
  step("remote.txt and README.md are in the laptop's working tree; local.txt, the index and HEAD as they were");

  const followed = await pi.embark(`follow ${id} ${JSON.stringify("now add follow.txt")}`);
  const followId = said(followed).match(/follow-up ([0-9a-f]{8,})/)?.[1];
  if (!followId) fail(`follow did not name a task: ${said(followed)}`);
  step(`follow-up ${followId} of ${id}`);
  const after = await pollStatus(pi, followId, 120_000);
  if (after.state !== "succeeded") fail(`the follow-up ended ${after.state}: ${said(after.status)}`);
  if (!said(after.status).includes("follows")) fail(`status does not show the chain: ${said(after.status)}`);
  const own = await pi.embark(`diff ${followId} --stat`);
  const ownStat = own.messages.find((m) => m.customType === "embark-diff")?.content ?? "";
  if (!String(ownStat).includes("follow.txt") || String(ownStat).includes("remote.txt")) fail(`the follow-up's diff is not what it added: ${ownStat}`);
  const chain = await pi.embark(`diff ${followId} --stat --from-root`);
  const chainStat = String(chain.messages.find((m) => m.customType === "embark-diff")?.content ?? "");
  if (!chainStat.includes("follow.txt") || !chainStat.includes("remote.txt")) fail(`--from-root is not the chain: ${chainStat}`);
  const onTop = await pi.embark(`apply ${followId}`);
  if (!said(onTop).startsWith(`Applied task ${followId}`)) fail(`apply of the follow-up said: ${said(onTop)}`);
  if (readFileSync(join(repo.work, "follow.txt"), "utf8") !== "from the follow-up\n") fail("follow.txt is not in the working tree");
  step("the follow-up resumed the conversation; its result applied on top of the parent's");
}

run(main, { onFailure: () => killMarked(dir) });
