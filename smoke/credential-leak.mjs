#!/usr/bin/env node
// smoke:credential-leak — the per-task credential proxy in bwrap mode with
// the real runner and real Pi. The profile's key lives in its auth.json; the
// scripted fake model (expect_key) answers only requests that carry it.
// The model's first turn runs a bash tool that dumps everything a task can
// reach: every file in $PI_CODING_AGENT_DIR, the environment,
// /proc/*/environ and /proc/*/cmdline; it writes the dump into the
// workspace (never redacted), makes its own request with the task's
// token for another model, and greps the whole task directory (the bundle
// included) for the key from inside the sandbox. Its last turn echoes the
// key it received. A third task's profile says `network = "none"`: the
// sandbox has only its own loopback, the proxy is a socket in the task
// directory and the runner's relay in the sandbox carries Pi's calls.
// Checked:
// - the key is nowhere a task could read it: not in the dump, not in the
//   task directory, not in any event, the verdict, the runner's log or the
//   broker's database; the fake model got the real key on every call;
// - the tool's own request for another model was refused (403), and a log
//   event says so;
// - the echoed key arrives as [redacted] in the events and the final text;
// - the in-sandbox grep found the key in no file of the task directory
//   (and found the token, so it did read the bundle);
// - the task's metered usage equals the sum of the model's answers;
// - a profile with a tiny max_cost fails its task with budget_exceeded;
// - with network = "none" the task succeeds through the socket with the
//   real key reaching the model, while a tool's own request to the
//   model's real port fails.

import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomUUID } from "node:crypto";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requireBwrap, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { events, submit, waitFinished } from "./lib/tasks.mjs";

const { dir, step, fail, run } = smokeScript("smoke:credential-leak", "embark-smoke-leak-");
const KEY = `sk-leak-${randomUUID()}`;

// The key reversed: the grep inside the sandbox gets it without the command (an event) holding it.
const REVERSED = [...KEY].reverse().join("");

// Everything a task can reach, into dump.txt, a request of its own with the token, and a grep of the task directory.
const DUMP = `{
for f in "$PI_CODING_AGENT_DIR"/* "$PI_CODING_AGENT_DIR"/../*; do echo "== $f"; cat "$f" 2>/dev/null; done
echo "== env"; env
for p in /proc/[0-9]*; do echo "== $p"; tr '\\0' ' ' < $p/environ 2>/dev/null; echo; tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done
} > dump.txt 2>&1
node -e '
const m = JSON.parse(require("fs").readFileSync(process.env.PI_CODING_AGENT_DIR + "/models.json", "utf8")).providers.fake;
fetch(m.baseUrl + "/chat/completions", { method: "POST", headers: { authorization: "Bearer " + m.apiKey, "content-type": "application/json" },
  body: JSON.stringify({ model: "another-model", messages: [{ role: "user", content: "hi" }], stream: true }) })
  .then(async (r) => console.log("direct request: " + r.status + " " + (await r.text()).slice(0, 300)));
'
wc -c dump.txt
node -e 'process.stdout.write([...process.argv[1]].reverse().join(""))' ${REVERSED} > /tmp/key
grep -rlF -f /tmp/key .. ; echo "in-sandbox grep for the key: exit $?"
grep -rlqF embark-proxy- "$PI_CODING_AGENT_DIR"; echo "in-sandbox grep for the token: exit $?"`;

const SCRIPT = {
  expect_key: KEY,
  usage: { input: 10, output: 5, cache_read: 2, cache_write: 0 },
  turns: [
    { tool_calls: [{ name: "bash", arguments: { command: "{{last_user_text}}" } }] },
    { text: "the key I was given is {{api_key}}" },
  ],
};

/** Every regular file under `root`, recursively (symlinks not followed). */
function filesUnder(root) {
  const out = [];
  for (const name of readdirSync(root)) {
    const path = join(root, name);
    const stat = statSync(path, { throwIfNoEntry: false });
    if (!stat) continue;
    if (stat.isDirectory()) out.push(...filesUnder(path));
    else if (stat.isFile()) out.push(path);
  }
  return out;
}

async function main() {
  requirePi();
  requireBwrap();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, SCRIPT);
  const secrets = { client: "leak-client-secret-0123456789", enrollment: "leak-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);

  const models = fakeModels(model.baseUrl);
  delete models.providers.fake.apiKey;
  const profiles = join(dir, "profiles");
  writeProfile(profiles, "default", { "settings.json": PI_SETTINGS, "models.json": models, "auth.json": { fake: { type: "api_key", key: KEY } } });
  // 10 in + 5 out + 2 cache read at 1 per token (per million): 17e-6 a call; the budget allows one.
  const priced = fakeModels(model.baseUrl);
  delete priced.providers.fake.apiKey;
  priced.providers.fake.models[0].cost = { input: 1, output: 1, cacheRead: 1, cacheWrite: 0 };
  const budgetDir = writeProfile(profiles, "budget", { "settings.json": PI_SETTINGS, "models.json": priced, "auth.json": { fake: { type: "api_key", key: KEY } } });
  writeFileSync(join(budgetDir, "profile.toml"), "version = 1\nmax_cost = 0.00001\n");

  const spaces = join(dir, "spaces");
  const runner = startRunner(dir, bin, {
    brokerUrl: broker.url,
    enrollmentSecret: secrets.enrollment,
    spaces,
    profiles,
    name: "leak-runner",
    args: ["--isolation", "bwrap", "--task-timeout-secs", "90"],
  });

  const offlineDir = writeProfile(profiles, "offline", { "settings.json": PI_SETTINGS, "models.json": models, "auth.json": { fake: { type: "api_key", key: KEY } } });
  writeFileSync(join(offlineDir, "profile.toml"), 'version = 1\nnetwork = "none"\n');

  const task = await submit(broker, secrets, repo, DUMP);
  const done = await waitFinished(broker, secrets, task.id);
  if (done.state !== "succeeded") fail(`the task ended ${done.state}: ${done.outcome?.reason}; see ${dir}/runner.log`);
  const evs = await events(broker, secrets, task.id);

  const dumpFile = join(spaces, task.id, "workspace", "dump.txt");
  if (!existsSync(dumpFile)) fail(`${dumpFile} is missing`);
  const dump = readFileSync(dumpFile, "utf8");
  if (!dump.includes("embark-proxy-") || !dump.includes("== env")) fail(`the dump did not see the task's configuration: ${dump.slice(0, 400)}`);
  for (const file of filesUnder(join(spaces, task.id))) {
    if (readFileSync(file).includes(KEY)) fail(`the key is in the task directory: ${file}`);
  }
  step(`the task dumped ${dump.length} bytes of its configuration, environment and /proc: no key; no file of the task directory holds it`);

  const stored = JSON.stringify(evs) + JSON.stringify(done);
  if (stored.includes(KEY)) fail("the key is in the task's events or record");
  for (const file of ["runner.log", "broker.log", "broker.db", "broker.db-wal"].map((f) => join(dir, f)).filter(existsSync)) {
    if (readFileSync(file).includes(KEY)) fail(`the key is in ${file}`);
  }
  const requests = readFileSync(join(dir, "fake-model.log"), "utf8").split("\n").filter((l) => l.includes('"event":"request"')).map((l) => JSON.parse(l));
  const piCalls = requests.filter((r) => r.model === "fake-model");
  if (piCalls.length !== 2 || !piCalls.every((r) => r.key_ok)) fail(`the fake model did not get the real key on each of Pi's calls: ${JSON.stringify(requests)}`);
  if (requests.some((r) => r.model === "another-model")) fail("the tool's request for another model reached the model");
  step("the key is in no event, verdict, log or broker row; the fake model got the real key on both of Pi's calls");

  const toolEnd = evs.find((e) => e.kind === "tool_end");
  const grepped = toolEnd?.payload.output ?? "";
  if (!grepped.includes("in-sandbox grep for the key: exit 1") || !grepped.includes("in-sandbox grep for the token: exit 0")) {
    fail(`the grep inside the sandbox did not come back clean (key: exit 1, token: exit 0): ${grepped.slice(-600)}`);
  }
  step("inside the sandbox, grep -r over the task directory and the bundle found no key (and did find the token)");
  if (!toolEnd?.payload.output.includes("direct request: 403")) fail(`the tool's own request was not refused: ${JSON.stringify(toolEnd?.payload)}`);
  if (!evs.some((e) => e.kind === "log" && e.payload.message.includes('refused a call for model "another-model"'))) fail("no log event names the refused model");
  step("the tool's own request with the token for another model was refused (403) and reported");

  if (!done.outcome.final_text.includes("the key I was given is [redacted]")) fail(`final text: ${done.outcome.final_text}`);
  if (!evs.some((e) => e.kind === "assistant_message" && e.payload.text.includes("[redacted]"))) fail("the echoed key is not redacted in the events");
  step("the key the model echoed arrived as [redacted] in the events and the final text");

  const usage = done.usage;
  const want = { input: 20, output: 10, cache_read: 4 };
  if (!usage || usage.calls !== 2 || usage.refused !== 1 || Object.entries(want).some(([k, v]) => usage.tokens[k] !== v)) {
    fail(`metered usage ${JSON.stringify(usage)}, expected 2 calls, 1 refused, ${JSON.stringify(want)}`);
  }
  if (done.stats && done.stats.tokens.output !== usage.tokens.output) fail(`Pi counted ${JSON.stringify(done.stats.tokens)}, the proxy ${JSON.stringify(usage.tokens)}`);
  step(`metered usage: ${usage.calls} calls, ${usage.refused} refused, ${JSON.stringify(want)} = the sum of the model's answers`);

  const capped = await submit(broker, secrets, repo, "echo within budget", { profile: "budget" });
  const cappedDone = await waitFinished(broker, secrets, capped.id);
  if (cappedDone.state !== "failed" || cappedDone.outcome?.code !== "budget_exceeded") fail(`the budget task ended ${cappedDone.state} (${cappedDone.outcome?.code}): ${cappedDone.outcome?.reason}`);
  if (cappedDone.usage?.calls !== 1 || cappedDone.usage?.max_cost !== 0.00001) fail(`budget usage ${JSON.stringify(cappedDone.usage)}`);
  step(`a task over its budget failed budget_exceeded: ${cappedDone.outcome.reason}`);

  // network = "none": the proxy is a socket, the relay in the sandbox carries Pi's calls, nothing else gets out.
  const before = readFileSync(join(dir, "fake-model.log"), "utf8").split("\n").filter((l) => l.includes('"event":"request"')).length;
  const direct = `node -e 'fetch("http://127.0.0.1:${model.port}/health").then((r) => console.log("direct to the model: " + r.status), (e) => console.log("direct to the model failed: " + (e.cause?.code ?? e.message)))'`;
  const offline = await submit(broker, secrets, repo, direct, { profile: "offline" });
  const offlineDone = await waitFinished(broker, secrets, offline.id);
  if (offlineDone.state !== "succeeded") fail(`the network = "none" task ended ${offlineDone.state}: ${offlineDone.outcome?.reason}; see ${dir}/runner.log`);
  const offlineTool = (await events(broker, secrets, offline.id)).find((e) => e.kind === "tool_end")?.payload.output ?? "";
  if (!offlineTool.includes("direct to the model failed") || offlineTool.includes("direct to the model: ")) fail(`a tool reached the model's real port from a network = "none" sandbox: ${offlineTool}`);
  const offlineCalls = readFileSync(join(dir, "fake-model.log"), "utf8").split("\n").filter((l) => l.includes('"event":"request"')).slice(before).map((l) => JSON.parse(l));
  if (offlineCalls.length !== 2 || !offlineCalls.every((r) => r.key_ok)) fail(`the network = "none" task's calls did not reach the model with the key: ${JSON.stringify(offlineCalls)}`);
  if (existsSync(join(spaces, offline.id, "proxy.sock"))) fail("the proxy's socket outlived its task");
  step(`network = "none": the task succeeded through the proxy's socket and the relay (2 calls, real key); the tool's own request failed: ${offlineTool.trim().split("\n").pop()}`);
  runner.child.kill("SIGTERM");
}

run(main);
