#!/usr/bin/env node
// smoke:pi-rpc — one task end to end through every real component:
// laptop Pi (RPC mode, /embark extension) → embark-sidecar → embark-broker
// (SQLite) → embark-runner → runner-side Pi → scripted fake model on 127.0.0.1.
// Help first (grouped, every command).
// The runner's Pi makes a bash tool call that creates a file in the remote
// workspace; the task succeeds and `/embark status` shows the result text
// (one notification: the state table and the events together). Then the
// board (`list`, `tasks` as a numbered board in RPC), selectors by number,
// prefix and id, the sync cursor, a clear unknown-task error, and a reopened
// session: a second task handed off by a Pi that held only /embark commands
// (no session file) finishes while no Pi runs; the next Pi in the same
// directory adopts it at session start and its result lands there, once;
// and a session Pi wrote a file for (a model turn of its own), reopened with
// `pi -c`, syncs its task at start and the result lands once.
// Live (embark.watch): with no command typed, the footer follows the task
// (queued → running → cleared when done), the attach widget (attached by id
// prefix) shows the tool call and the final state, and the result lands once;
// at the end a cancel is confirmed by the live state frame.

import { existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { submittedTaskId, taskState } from "./lib/pi-rpc-client.mjs";
import { waitFinished } from "./lib/tasks.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requirePi, startBrokerAndRunner, startFakeModel, startLaptopPi } from "./lib/stack.mjs";

const PROMPT = "create remote.txt saying remote hello";
const FINAL_TEXT = "done: remote.txt now says remote hello";
const LAPTOP_TEXT = "hello from the laptop's own model";
const SCRIPT = {
  turns: [
    { tool_calls: [{ name: "bash", arguments: { command: "echo 'remote hello' > remote.txt && cat remote.txt" } }] },
    { text: FINAL_TEXT },
  ],
};

const { dir, step, fail, run } = smokeScript("smoke:pi-rpc", "embark-smoke-pi-rpc-");

/** Waits (bounded) until the broker says task `id` succeeded. */
async function waitSucceeded(broker, secrets, id) {
  const task = await waitFinished(broker, secrets, id);
  if (task.state !== "succeeded") fail(`task ${id} ended ${task.state}`);
}

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

  // Help, grouped: the common loop first, then targeting one task, then maintenance.
  const help = (await pi.embark("help")).notes.map((n) => n.message).join("\n");
  const groups = ["The common loop:", "Targeting one task", "Maintenance:"].map((g) => help.indexOf(g));
  if (groups.some((at) => at < 0) || !(groups[0] < groups[1] && groups[1] < groups[2])) fail(`help is not grouped:\n${help}`);
  for (const word of ["status", "tasks", "attach", "sync", "cancel", "detach", "diff", "apply", "reconcile", "cleanup", "runners"]) {
    if (!help.includes(`/embark ${word}`)) fail(`help does not name /embark ${word}`);
  }
  step("help lists every command, grouped");

  const submitted = await pi.embark(JSON.stringify(PROMPT));
  const submitText = submitted.notes.map((n) => n.message).join("\n");
  step(`submit said: ${submitText.split("\n")[0]}`);
  const shortId = submittedTaskId(submitted);
  if (!shortId) fail(`submit did not name a task: ${submitText}`);

  if (submitted.statuses.at(-1)?.statusText !== "embark: 1 task queued") fail(`submit footer: ${JSON.stringify(submitted.statuses)}`);

  // Attach by id prefix, then type nothing: the live updates alone carry the task to its end.
  const attached = await pi.embark(`attach ${shortId.slice(0, 6)}`);
  if (!/^Attached to task/.test(attached.notes[0]?.message ?? "")) fail(`attach: ${JSON.stringify(attached.notes)}`);
  if (!attached.widgets.some((w) => (w.widgetLines ?? []).join("\n").includes(shortId))) fail(`attach set no widget: ${JSON.stringify(attached.widgets)}`);
  const before = [...submitted.seen, ...attached.seen];
  const isResult = (m) => m.type === "message_end" && m.message?.role === "custom" && m.message.customType === "embark-result";
  const isStatus = (m) => m.type === "extension_ui_request" && m.method === "setStatus";
  const cleared = (m) => isStatus(m) && (m.statusText ?? null) === null;
  const isWidget = (m) => m.type === "extension_ui_request" && m.method === "setWidget";
  const live = await pi.waitFor("the live result, a cleared footer and the widget's last state", (seen) => {
    const all = [...before, ...seen];
    const widgets = all.filter(isWidget);
    return all.some(isResult) && all.some(cleared) && /succeeded/.test((widgets.at(-1)?.widgetLines ?? []).join("\n"));
  }, 120_000);
  const all = [...before, ...live];
  const footers = all.filter(isStatus).map((m) => m.statusText ?? null);
  step(`footer without typing: ${JSON.stringify(footers)}`);
  if (!footers.includes("embark: 1 task running")) fail(`the footer never said running: ${JSON.stringify(footers)}`);
  if (footers.at(-1) !== null) fail(`the footer did not clear when the task ended: ${JSON.stringify(footers)}`);
  const results = all.filter(isResult).map((m) => m.message);
  if (results.length !== 1) fail(`expected one embark-result message, got ${results.length}`);
  if (!results[0].content.includes(FINAL_TEXT)) fail(`the result message lacks ${JSON.stringify(FINAL_TEXT)}: ${results[0].content}`);
  const widgetTexts = all.filter((m) => m.method === "setWidget").map((m) => (m.widgetLines ?? []).join("\n"));
  step(`widget at the end:\n${widgetTexts.at(-1)}`);
  if (!widgetTexts.some((w) => w.includes("tool: bash"))) fail(`the widget never showed the tool call: ${JSON.stringify(widgetTexts)}`);
  if (!widgetTexts.at(-1)?.includes("succeeded")) fail(`the widget did not end succeeded: ${widgetTexts.at(-1)}`);
  if (!all.some((m) => m.method === "notify" && /task \S+ succeeded/.test(m.message ?? ""))) fail("no line said the task succeeded");
  step("footer, widget and result followed the task live");

  // Asking shows the status but does not add the result to the conversation a second time.
  const status = await pi.embark(`status ${shortId}`);
  if (taskState(status) !== "succeeded") fail(`status after the end: ${status.notes[0]?.message}`);
  if (status.messages.length !== 0) fail(`the result was added again: ${JSON.stringify(status.messages)}`);
  const fullId = submitText.match(/Task id ([0-9a-f-]{36})/)?.[1];
  for (const selector of ["1", fullId]) {
    const again = await pi.embark(`attach ${selector}`);
    if (!new RegExp(`^Attached to task ${shortId}, which already succeeded`).test(again.notes[0]?.message ?? "")) fail(`attach ${selector}: ${again.notes[0]?.message}`);
    if (again.messages.length !== 0) fail(`attach ${selector} added the result again`);
  }
  step("result landed in the conversation once (status, attach by number and by id add nothing)");

  if (status.notes.length !== 1) fail(`status should be ONE notification, got ${status.notes.length}`);
  if (!/Recent events/.test(status.notes[0].message)) fail("the status notification lacks the events");

  const list = await pi.embark("list");
  const board = list.notes.map((n) => n.message).join("\n");
  if (!new RegExp(`^1\\s+${shortId}\\s+tracked\\s+succeeded`, "m").test(board)) fail(`list lacks task 1:\n${board}`);
  const tasks = await pi.embark("tasks");
  const picker = tasks.notes.map((n) => n.message).join("\n");
  if (!/^\s+1\. succeeded/m.test(picker)) fail(`tasks is not a numbered board in RPC:\n${picker}`);
  for (const selector of ["1", shortId.slice(0, 6), "latest"]) {
    const view = await pi.embark(`status ${selector}`);
    if (taskState(view) !== "succeeded") fail(`status ${selector} did not show the task`);
  }
  const unknown = await pi.embark("status 7");
  const line = unknown.notes[0]?.message ?? "";
  if (unknown.notes[0]?.notifyType !== "error" || !/no task 7/.test(line) || line.includes("\n")) fail(`status 7: ${line}`);
  const firstSync = await pi.embark("sync 1");
  if (!/new events? after #0/.test(firstSync.notes[0]?.message ?? "")) fail(`first sync: ${firstSync.notes[0]?.message}`);
  const secondSync = await pi.embark("sync 1");
  if (!/no new events since #\d+/.test(secondSync.notes[0]?.message ?? "")) fail(`second sync: ${secondSync.notes[0]?.message}`);
  step("list, the numbered board, selectors and the sync cursor work");

  const [taskDir] = readdirSync(spaces).filter((d) => d.replaceAll("-", "").startsWith(shortId));
  if (!taskDir) fail(`no task directory for ${shortId} under ${spaces}`);
  const created = join(spaces, taskDir, "workspace", "remote.txt");
  if (!existsSync(created)) fail(`${created} was not created by the runner's Pi`);
  const content = readFileSync(created, "utf8");
  if (content !== "remote hello\n") fail(`${created} holds ${JSON.stringify(content)}`);
  if (existsSync(join(repo.work, "remote.txt"))) fail("the laptop's working tree was touched");
  step(`remote workspace file ${created} = ${JSON.stringify(content)}`);

  // A second task, then Pi quits before it ends: this session held only /embark commands, so Pi wrote no file.
  const secondView = await pi.embark(JSON.stringify("and once more"));
  const second = submittedTaskId(secondView);
  const secondFull = secondView.notes.map((n) => n.message).join("\n").match(/Task id ([0-9a-f-]{36})/)?.[1];
  if (!second || !secondFull) fail("the second submit named no task");
  pi.proc.child.stdin.end();
  await new Promise((resolve) => pi.proc.child.once("exit", resolve));
  step(`laptop Pi quit with task ${second} in flight`);
  await waitSucceeded(broker, secrets, secondFull);

  const reopened = startLaptopPi(dir, { piBin, bin, repo, broker, secrets, log: "laptop-pi-2.log" });
  const first = await reopened.call({ type: "get_state" });
  const notes = first.seen.filter((m) => m.type === "extension_ui_request" && m.method === "notify").map((m) => m.message);
  if (!notes.some((n) => /took over 2 tasks/.test(n))) fail(`no adoption notice at session start: ${JSON.stringify(notes)}`);
  // Sent from session_start, before Pi's RPC loop streams events: it is in the conversation, not in the stream.
  const conversation = (await reopened.call({ type: "get_messages" })).response.data.messages;
  const landed = conversation.filter((m) => m.role === "custom" && m.customType === "embark-result");
  if (landed.length !== 1 || !JSON.stringify(landed[0].content).includes(FINAL_TEXT)) {
    fail(`the result did not land once at start: ${JSON.stringify(conversation).slice(0, 2000)}`);
  }
  const adopted = await reopened.embark("list");
  if (!adopted.notes[0].message.includes(second)) fail(`the reopened session does not list ${second}`);
  const again2 = await reopened.embark(`status ${second}`);
  if (again2.messages.length !== 0) fail("the adopted result landed twice");
  step("the reopened session adopted the task and its result landed once");

  // Cancel: whether the runner had claimed it or not, the live state frame confirms it.
  const third = submittedTaskId(await reopened.embark(JSON.stringify("to be cancelled")));
  const cancel = await reopened.embark("cancel 1");
  step(`cancel said: ${cancel.notes[0]?.message}`);
  const confirmed = (m) => m.method === "notify" && new RegExp(`task ${third} was cancelled`).test(m.message ?? "");
  if (!cancel.seen.some(confirmed)) {
    await reopened.waitFor("the cancel confirmed live", (seen) => seen.some(confirmed), 60_000);
  }
  step("the cancel was confirmed by the live state");
  reopened.proc.child.stdin.end();
  await new Promise((resolve) => reopened.proc.child.once("exit", resolve));

  // A session Pi wrote a file for (a model turn of its own), reopened with `pi -c`: the same
  // session, its task mirrored in the file, synced at session start with the result landing once.
  mkdirSync(join(dir, "laptop-model"), { recursive: true });
  const laptopModel = await startFakeModel(join(dir, "laptop-model"), { turns: [{ text: LAPTOP_TEXT }] });
  const sessionDir = join(dir, "laptop-sessions");
  const withFile = { piBin, bin, repo, broker, secrets, sessionDir, modelBaseUrl: laptopModel.baseUrl, args: ["--provider", "fake", "--model", "fake-model"] };
  const talker = startLaptopPi(dir, { ...withFile, log: "laptop-pi-3.log" });
  const sessionId = (await talker.call({ type: "get_state" })).response.data.sessionId;
  await talker.call({ type: "prompt", message: "hello laptop" });
  await talker.waitFor("the laptop's own turn", (seen) => seen.some((m) => m.type === "agent_end"));
  const fourthView = await talker.embark(JSON.stringify("from a session with a file"));
  const fourth = submittedTaskId(fourthView);
  const fourthFull = fourthView.notes.map((n) => n.message).join("\n").match(/Task id ([0-9a-f-]{36})/)?.[1];
  if (!fourth || !fourthFull) fail("the submit from the session with a file named no task");
  talker.proc.child.stdin.end();
  await new Promise((resolve) => talker.proc.child.once("exit", resolve));
  const files = readdirSync(sessionDir).filter((f) => f.endsWith(".jsonl"));
  if (files.length !== 1 || !readFileSync(join(sessionDir, files[0]), "utf8").includes(fourthFull)) {
    fail(`Pi's session file does not mirror task ${fourthFull}: ${JSON.stringify(files)}`);
  }
  step(`laptop Pi wrote its session file and quit with task ${fourth} in flight`);
  await waitSucceeded(broker, secrets, fourthFull);

  const continued = startLaptopPi(dir, { ...withFile, log: "laptop-pi-4.log", args: [...withFile.args, "-c"] });
  const state = (await continued.call({ type: "get_state" })).response.data;
  if (state.sessionId !== sessionId) fail(`pi -c opened session ${state.sessionId}, not ${sessionId}`);
  const history = (await continued.call({ type: "get_messages" })).response.data.messages;
  const landedOnce = history.filter((m) => m.role === "custom" && m.customType === "embark-result" && JSON.stringify(m.content).includes(fourth));
  if (landedOnce.length !== 1) {
    fail(`the continued session's result did not land once: ${JSON.stringify(history).slice(0, 2000)}`);
  }
  if ((await continued.embark(`status ${fourth}`)).messages.length !== 0) fail("the continued session's result landed twice");
  step("pi -c reopened the same session, synced its task at start, and the result landed once");
}

run(main);
