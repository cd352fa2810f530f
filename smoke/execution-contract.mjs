#!/usr/bin/env node
// smoke:execution-contract — the execution intent end to end with the real
// binaries, real Pi and the fake model: with no runner enrolled a task is
// queued; a runner advertises its profiles (profile.toml) at enrollment and
// GET /v1/runners and `/embark runners` list them; the broker refuses at
// submit (422 intent_unsupported, naming the closest) an intent no runner
// serves; a queued task the runner cannot serve is never handed to it,
// while a servable one runs with exactly the provider and model named; the
// sidecar resolves flags over EMBARK_* config, and `--isolation`/`--label`
// and `/embark defaults` (the session layer, kept across sidecars as after
// `pi -c`) end to end: explicit > session default > sidecar config > runner
// default; Pi's session stats land on the task and in `/embark status`.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { buildBinaries, fakeModels, fixtureRepo, requirePi, sidecarCommands, startBroker, startFakeModel, startRunner, writeProfile, PI_SETTINGS } from "./lib/stack.mjs";
import { api, until, waitFinished } from "./lib/tasks.mjs";

const NAME = "smoke:execution-contract";
const { dir, step, fail, run } = smokeScript(NAME, "embark-smoke-contract-");

/** POST /v1/tasks, answering the status and body whatever they are. */
async function create(broker, secrets, repo, intent, prompt = "say hi") {
  const res = await fetch(`${broker.url}/v1/tasks`, {
    method: "POST",
    headers: { authorization: `Bearer ${secrets.client}`, "content-type": "application/json" },
    body: JSON.stringify({ repo_url: repo.origin, commit: repo.head, prompt, intent, session_id: "contract" }),
  });
  return { status: res.status, body: await res.json() };
}

/** The sidecar answers of `lines`, in Pi session `session`. */
const sidecar = (bin, env, cwd, lines, session = "contract-sidecar") => sidecarCommands(bin, dir, env, cwd, lines, session);

async function main() {
  requirePi();
  step("building binaries");
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const model = await startFakeModel(dir, { turns: [{ text: "hi from the fake model" }] });
  const secrets = { client: "contract-client-secret-0123456789", enrollment: "contract-enrollment-secret-0123456789" };
  const broker = await startBroker(dir, bin, secrets);
  const profiles = join(dir, "profiles");
  const fakeProfile = { "settings.json": PI_SETTINGS, "models.json": fakeModels(model.baseUrl) };
  const main = writeProfile(profiles, "default", fakeProfile);
  writeFileSync(join(main, "profile.toml"), 'version = 1\nproviders = ["fake"]\nmodels = ["fake-*"]\n');
  const team = writeProfile(profiles, "team", fakeProfile);
  writeFileSync(join(team, "profile.toml"), 'version = 1\nproviders = ["fake"]\nmodels = ["team-model"]\n');

  // No runner yet: any valid intent is accepted and queued.
  const early = await create(broker, secrets, repo, { auth_profile: "nobody-has-this", provider: "fake", model: "fake-model" });
  if (early.status !== 201) fail(`with no runner enrolled the task should queue: ${early.status} ${JSON.stringify(early.body)}`);
  step("no runner enrolled: the task is queued");

  startRunner(dir, bin, { brokerUrl: broker.url, enrollmentSecret: secrets.enrollment, spaces: join(dir, "spaces"), profiles, name: "contract-runner", args: ["--labels", "smoke"] });
  const fleet = await until("the runner enrolls", async () => (await api(broker.url, secrets.client, "/v1/runners")).runners.find((r) => r.name === "contract-runner"));
  const caps = fleet.capabilities;
  const advertised = Object.fromEntries(caps.profiles.map((p) => [p.name, `${p.providers.join(",")}/${p.models.join(",")}`]));
  if (advertised.default !== "fake/fake-*" || advertised.team !== "fake/team-model") fail(`advertised profiles: ${JSON.stringify(caps)}`);
  if (caps.isolation.join() !== "process" || caps.labels.join() !== "smoke" || caps.max_tasks !== 1 || caps.pi_version !== "0.73.1") fail(`advertised runner: ${JSON.stringify(caps)}`);
  step("the runner advertises its profiles, isolation, labels, Pi version and max tasks");

  // Submit-time refusals, each naming the closest thing.
  const refusals = [
    [{ auth_profile: "nope", provider: "fake", model: "fake-model" }, 'holds no auth profile "nope" (it has default, team)'],
    [{ auth_profile: "default", provider: "anthropic", model: "fake-model" }, 'does not allow provider "anthropic" (it allows fake)'],
    [{ auth_profile: "team", provider: "fake", model: "fake-model" }, 'does not allow model "fake-model" (it allows team-model)'],
    [{ auth_profile: "default", provider: "fake", model: "fake-model", isolation: "bwrap" }, "cannot run under isolation bwrap"],
    [{ auth_profile: "default", provider: "fake", model: "fake-model", labels: ["gpu"] }, "lacks the labels gpu"],
  ];
  for (const [intent, says] of refusals) {
    const { status, body } = await create(broker, secrets, repo, intent);
    if (status !== 422 || body.error?.code !== "intent_unsupported" || !body.error.message.includes(says) || !body.error.message.includes('runner "contract-runner"')) {
      fail(`${JSON.stringify(intent)}: expected 422 intent_unsupported saying ${JSON.stringify(says)}: ${status} ${JSON.stringify(body)}`);
    }
  }
  step(`an intent no runner serves is refused at submit with the closest thing (${refusals.length} cases)`);

  // A valid combination runs with exactly what was named.
  const ok = await create(broker, secrets, repo, { auth_profile: "default", provider: "fake", model: "fake-model", isolation: "process", labels: ["smoke"] });
  if (ok.status !== 201) fail(`a servable intent was refused: ${JSON.stringify(ok.body)}`);
  const done = await waitFinished(broker, secrets, ok.body.id);
  if (done.state !== "succeeded") fail(`the servable task ended ${done.state}: ${done.outcome?.reason}; see ${dir}/runner.log`);
  const asked = readFileSync(join(dir, "fake-model.log"), "utf8");
  if (!asked.includes('"model":"fake-model"')) fail(`the fake model was not asked for fake-model: ${asked.slice(0, 400)}`);
  if (!done.stats || typeof done.stats.tokens?.total !== "number") fail(`no session stats on the task: ${JSON.stringify(done)}`);
  step(`the servable task ran with fake/fake-model exactly; stats on the task (${done.stats.tokens.total} tokens)`);

  // The early task the runner cannot serve was never handed out.
  const stuck = await api(broker.url, secrets.client, `/v1/tasks/${early.body.id}`);
  if (stuck.state !== "queued" || stuck.attempt !== 0) fail(`the unservable task was claimed: ${stuck.state}, attempt ${stuck.attempt}`);
  step("a queued task the runner cannot serve is never claimed by it");

  // The sidecar: flags beat EMBARK_* config; runners and stats are shown.
  const env = { EMBARK_BROKER_URL: broker.url, EMBARK_CLIENT_SECRET: secrets.client, EMBARK_PROVIDER: "fake", EMBARK_MODEL: "team-model", EMBARK_PROFILE: "team" };
  const [submitted, refused, runners] = await sidecar(bin, env, repo.work, ['"hi again" --profile default --model fake-model', '"no" --model fake-model', "runners"]);
  if (submitted.error) fail(`sidecar submit: ${JSON.stringify(submitted.error)}`);
  const mine = (await api(broker.url, secrets.client, "/v1/tasks?session_id=contract-sidecar")).tasks[0];
  const intent = mine?.intent;
  if (intent?.auth_profile !== "default" || intent.provider !== "fake" || intent.model !== "fake-model") fail(`precedence: ${JSON.stringify(intent)}`);
  if (!refused.error?.message.includes('does not allow model "fake-model" (it allows team-model)')) fail(`the sidecar should pass on the broker's refusal: ${JSON.stringify(refused)}`);
  const table = JSON.stringify(runners.result);
  if (!table.includes("contract-runner") || !table.includes("team-model") || !table.includes("fake-*")) fail(`/embark runners: ${table}`);
  step("sidecar: flags over EMBARK_* (profile and model from flags, provider from env); /embark runners lists the fleet");

  // The session layer and the isolation/label flags, end to end. The config names provider and model, no profile.
  const cfg = { EMBARK_BROKER_URL: broker.url, EMBARK_CLIENT_SECRET: secrets.client, EMBARK_PROVIDER: "fake", EMBARK_MODEL: "team-model" };
  const S = "contract-defaults";
  const [set] = await sidecar(bin, cfg, repo.work, ["defaults --profile team --isolation process --label smoke"], S);
  if (set.error) fail(`defaults: ${JSON.stringify(set.error)}`);
  // A new sidecar (Pi restarted with `pi -c`: the same session id) still has them.
  const [bySession, explicit, badMode, badLabel, defaultsShown] = await sidecar(
    bin,
    cfg,
    repo.work,
    ['"by the session defaults"', '"explicit wins" --profile default --model fake-model', '"no" --isolation bwrap', '"no" --label gpu', "defaults"],
    S,
  );
  for (const answer of [bySession, explicit]) if (answer.error) fail(`a submit with session defaults: ${JSON.stringify(answer.error)}`);
  const [second, first] = (await api(broker.url, secrets.client, `/v1/tasks?session_id=${S}`)).tasks;
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  if (!same(first.intent, { auth_profile: "team", provider: "fake", model: "team-model", isolation: "process", labels: ["smoke"] })) fail(`session over config: ${JSON.stringify(first.intent)}`);
  if (!same(second.intent, { auth_profile: "default", provider: "fake", model: "fake-model", isolation: "process", labels: ["smoke"] })) fail(`explicit over session: ${JSON.stringify(second.intent)}`);
  if (!badMode.error?.message.includes("cannot run under isolation bwrap")) fail(`--isolation bwrap should be refused at submit: ${JSON.stringify(badMode)}`);
  if (!badLabel.error?.message.includes("lacks the labels gpu")) fail(`--label gpu should be refused at submit: ${JSON.stringify(badLabel)}`);
  const rows = defaultsShown.result.blocks.find((b) => b.type === "table").rows.map((r) => r.join(" | "));
  for (const row of ["auth profile | team | session default", "provider | fake | sidecar config (EMBARK_* or config.toml)", "labels | smoke | session default"]) {
    if (!rows.includes(row)) fail(`/embark defaults lacks ${JSON.stringify(row)}: ${JSON.stringify(rows)}`);
  }
  const [, afterClear] = await sidecar(bin, cfg, repo.work, ["defaults --clear", '"after clear" --model fake-model'], S);
  if (afterClear.error) fail(`after clear: ${JSON.stringify(afterClear.error)}`);
  const [latest] = (await api(broker.url, secrets.client, `/v1/tasks?session_id=${S}`)).tasks;
  if (!same(latest.intent, { auth_profile: "default", provider: "fake", model: "fake-model" })) fail(`after --clear the runner default profile: ${JSON.stringify(latest.intent)}`);
  const served = await waitFinished(broker, secrets, second.id);
  if (served.state !== "succeeded") fail(`the task with --isolation process and --label smoke ended ${served.state}: ${served.outcome?.reason}`);
  step("session defaults (kept across sidecars) beat the config, flags beat them, --clear falls back to the runner default; --isolation/--label refused at submit or run as named");

  await waitFinished(broker, secrets, mine.id);
  const [status] = await sidecar(bin, env, repo.work, ["status"]);
  const shown = JSON.stringify(status.result);
  if (!shown.includes('"tokens"') || !shown.includes('"cost"')) fail(`/embark status lacks the stats: ${shown.slice(0, 800)}`);
  step("/embark status shows tokens and cost");
}

run(main);
