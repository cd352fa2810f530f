#!/usr/bin/env node
// smoke:execution-failures — what fails before Pi starts, with the real
// broker and runner in docker mode against the fake docker CLI on PATH (no
// Docker engine runs here): malformed task payloads and capability
// advertisements are refused by the broker with their rule's status; a task
// whose profile or policy changed on the runner after it enrolled (profile
// removed, model no longer allowed, profile.toml broken) fails before Pi
// starts — `pre_launch:intent_unsupported` for what the runner cannot run,
// the file and key for a broken policy — and no container is ever started.

import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, installFakeDocker, requirePi, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { api, events, until, waitFinished } from "./lib/tasks.mjs";

const NAME = "smoke:execution-failures";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-failures-");

async function post(url, secret, path, body) {
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

async function main() {
  requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, { turns: [{ text: "never asked" }] });
  const secrets = { client: "failures-client-secret-0123456789", enrollment: "failures-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);
  const task = (intent) => ({ repo_url: repo.origin, commit: repo.head, prompt: "p", intent, session_id: "failures" });
  const good = { auth_profile: "default", provider: "fake", model: "fake-model" };

  // Malformed payloads: refused with their rule's status, nothing stored.
  const malformed = [
    ["a flag-like model", task({ ...good, model: "--api-key=x" }), 422, "model"],
    ["a traversal profile", task({ ...good, auth_profile: "../etc" }), 422, "auth profile"],
    ["an unknown isolation", task({ ...good, isolation: "vm" }), 422, ""],
    ["a label with a space", task({ ...good, labels: ["a b"] }), 422, "label"],
    ["an unknown intent field", task({ ...good, gpu: true }), 422, "gpu"],
    ["not JSON", "{", 400, ""],
  ];
  for (const [what, body, status, says] of malformed) {
    const answer = await post(broker.url, secrets.client, "/v1/tasks", body);
    if (answer.status !== status || !JSON.stringify(answer.body).includes(says)) fail(`${what}: ${answer.status} ${JSON.stringify(answer.body)}`);
  }
  const badCaps = { name: "bad", capabilities: { profiles: [{ name: "p", providers: ["a b"], models: ["*"], isolation: ["docker"] }], isolation: ["docker"], max_tasks: 1 } };
  const refusedEnroll = await post(broker.url, secrets.enrollment, "/v1/runners/enroll", badCaps);
  if (refusedEnroll.status !== 422 || !refusedEnroll.body.error.message.includes("capabilities")) fail(`bad capabilities: ${JSON.stringify(refusedEnroll)}`);
  step(`malformed payloads refused (${malformed.length} tasks, 1 enrollment)`);

  // A docker-mode runner with three profiles, all valid at enrollment.
  const profiles = join(dir, "profiles");
  const files = { "settings.json": PI_SETTINGS, "models.json": fakeModels(model.baseUrl) };
  writeProfile(profiles, "default", files);
  const narrowed = writeProfile(profiles, "narrowed", files);
  const breaking = writeProfile(profiles, "breaking", files);
  writeProfile(profiles, "vanishing", files);
  const docker = installFakeDocker(dir);
  startRunner(dir, bin, {
    brokerUrl: broker.url,
    enrollmentSecret: secrets.enrollment,
    spaces: join(dir, "spaces"),
    profiles,
    name: "failures-runner",
    args: ["--isolation", "docker", "--docker-user", "1000:1000", "--docker-image", "embark-pi-runner:smoke"],
    env: docker.env,
  });
  await until("the runner enrolls", async () => (await api(broker.url, secrets.client, "/v1/runners")).runners.length === 1);

  // Then the runner's side changes under it.
  writeFileSync(join(narrowed, "profile.toml"), 'version = 1\nmodels = ["other-model"]\n');
  writeFileSync(join(breaking, "profile.toml"), "version = 1\nmodles = []\n");
  rmSync(join(profiles, "vanishing"), { recursive: true });

  const cases = [
    ["narrowed", "pre_launch:intent_unsupported: auth profile \"narrowed\" does not allow model \"fake-model\" (it allows other-model)"],
    ["vanishing", "pre_launch:intent_unsupported: auth profile \"vanishing\" is not configured on this runner"],
    ["breaking", `the profile policy ${join(breaking, "profile.toml")} has an unknown key \`modles\``],
  ];
  for (const [profile, says] of cases) {
    const created = await api(broker.url, secrets.client, "/v1/tasks", task({ ...good, auth_profile: profile }));
    const done = await waitFinished(broker, secrets, created.id, 60_000);
    const reason = done.outcome?.reason ?? "";
    if (done.state !== "failed" || !reason.startsWith(says)) fail(`${profile}: expected a failure starting ${JSON.stringify(says)}: ${done.state} ${reason}`);
    const phases = (await events(broker, secrets, created.id)).filter((e) => e.kind === "lifecycle").map((e) => e.payload.phase);
    if (JSON.stringify(phases) !== JSON.stringify(["claimed", "finishing"])) fail(`${profile}: Pi's phases were reached: ${JSON.stringify(phases)}`);
  }
  const runs = docker.calls().filter((c) => c.argv[0] === "run");
  if (runs.length) fail(`a container was started: ${JSON.stringify(runs)}`);
  if (readFileSync(join(dir, "fake-model.log"), "utf8").includes('"event":"request"')) fail("the model was asked");
  step(`intents the runner cannot run fail before Pi starts; no container started (${cases.length} cases)`);
}

run(main);
