#!/usr/bin/env node
// smoke:runner-safety — the pre-claim repository check with the real
// binaries, real git and real Pi: a task whose repository the runner's git
// cannot read without a prompt (an HTTP server on 127.0.0.1 that answers
// 401 to everything) is never claimed: it stays queued, the runner logs
// `repo_unavailable_before_claim` with git's reason ("terminal prompts
// disabled"), and the askpass helper the runner's user config names never
// runs; a task of a readable repository queued after it runs at once; the
// check's result is cached (git asks the server once, not on every claim).

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { api, sleep, until, waitFinished } from "./lib/tasks.mjs";

const { dir, step, fail, run } = smokeScript("smoke:runner-safety", "embark-smoke-safety-");

/** A git server that wants credentials nobody has: 401 to every request, each one counted. */
async function startLockedServer() {
  const requests = [];
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    res.writeHead(401, { "www-authenticate": 'Basic realm="private"', "content-type": "text/plain" });
    res.end("authentication required\n");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, requests, url: `http://127.0.0.1:${server.address().port}/team/private.git` };
}

async function main() {
  requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const locked = await startLockedServer();
  const model = await startFakeModel(dir, { turns: [{ text: "hi from the fake model" }] });
  const secrets = { client: "safety-client-secret-0123456789", enrollment: "safety-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets, "127.0.0.1:0", { EMBARK_BROKER_REPO_TRANSPORTS: "https,http,ssh,git,local" });
  const profiles = join(dir, "profiles");
  writeProfile(profiles, "default", { "settings.json": PI_SETTINGS, "models.json": fakeModels(model.baseUrl) });

  // The runner's user has an askpass helper configured (and the environment asks for prompts):
  // the runner's git must use neither.
  const askpassMarker = join(dir, "askpass-ran");
  const askpass = join(dir, "askpass.sh");
  writeFileSync(askpass, `#!/bin/sh\necho "$@" >> '${askpassMarker}'\necho secret\n`, { mode: 0o755 });
  const gitConfig = join(dir, "runner-gitconfig");
  writeFileSync(gitConfig, `[core]\n\taskPass = ${askpass}\n`);
  const runnerEnv = { GIT_CONFIG_GLOBAL: gitConfig, GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "1", GIT_ASKPASS: askpass, SSH_ASKPASS: askpass };

  // Both tasks are queued before the runner starts: the locked one first, so it is the oldest.
  const create = (repoUrl) =>
    api(broker.url, secrets.client, "/v1/tasks", {
      repo_url: repoUrl,
      commit: repo.head,
      prompt: "say hi",
      intent: { auth_profile: "default", provider: "fake", model: "fake-model" },
      session_id: "safety",
    });
  const lockedTask = await create(locked.url);
  const readableTask = await create(repo.origin);
  step("queued a task of a repository behind HTTP 401, then one of a readable repository");

  const started = Date.now();
  startRunner(dir, bin, { brokerUrl: broker.url, enrollmentSecret: secrets.enrollment, spaces: join(dir, "spaces"), profiles, name: "safety-runner", env: runnerEnv, gitProtocols: "https,http,ssh,git,file" });
  const done = await waitFinished(broker, secrets, readableTask.id);
  if (done.state !== "succeeded") fail(`the readable task ended ${done.state}: ${done.outcome?.reason}; see ${dir}/runner.log`);
  step(`the readable task ran (${Date.now() - started} ms after the runner started), past the older unreadable one`);

  const log = () => readFileSync(join(dir, "runner.log"), "utf8");
  const unavailable = () => log().split("\n").filter((line) => line.includes("repo_unavailable_before_claim"));
  await until("the runner logs repo_unavailable_before_claim", async () => unavailable().length > 0, 10_000);
  const [line] = unavailable();
  if (!line.includes(locked.url)) fail(`the log line does not name the repository: ${line}`);
  if (!line.includes("terminal prompts disabled")) fail(`the reason is not git's "terminal prompts disabled": ${line}`);
  if (locked.requests.length === 0) fail("git never asked the locked server: the check did not run");
  step(`logged: ${line.slice(line.indexOf("repo_unavailable_before_claim")).slice(0, 220)}`);

  // A few more claims go by (the runner long-polls again and again): the task stays queued, the check is cached.
  await sleep(3000);
  const stuck = await api(broker.url, secrets.client, `/v1/tasks/${lockedTask.id}`);
  if (stuck.state !== "queued" || stuck.attempt !== 0) fail(`the unreadable task was claimed: ${stuck.state}, attempt ${stuck.attempt}`);
  if (existsSync(askpassMarker)) fail(`the askpass helper ran: ${readFileSync(askpassMarker, "utf8")}`);
  if (unavailable().length !== 1) fail(`the check was not cached: ${unavailable().length} log lines in ${Date.now() - started} ms`);
  const asked = locked.requests.length;
  if (asked > 2) fail(`git asked the locked server ${asked} times: ${locked.requests.join(", ")}`);
  step(`the unreadable task stays queued (attempt 0); no askpass ran, no prompt; git asked the server ${asked} time(s), checked once`);
  locked.server.close();
}

run(main);
