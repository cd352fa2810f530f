#!/usr/bin/env node
// `npm run demo [-- <target repo>]`: the whole embark loop on this machine,
// on the embedded default — a local SQLite broker, a local runner and Pi with
// the /embark extension in a target repository.
//
// Model: with ANTHROPIC_API_KEY or OPENAI_API_KEY set (or EMBARK_PROVIDER +
// EMBARK_MODEL with a key Pi knows), the runner uses that real model. With no
// credentials it uses embark's scripted demo model on 127.0.0.1, labelled as
// such in every answer, so a newcomer sees the loop offline.
//
// In a terminal it opens Pi for you to type `/embark "…"`; without one (CI,
// a pipe) or with --check it runs one round trip itself and prints it.

import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

import { stopAll } from "../smoke/lib/process.mjs";
import { PiRpc, pollStatus, submittedTaskId } from "../smoke/lib/pi-rpc-client.mjs";
import { PI_BIN, ROOT, buildBinaries, emptyConfig, fakeModels, fixtureRepo, startBrokerAndRunner, startFakeModel, writeFakePiConfig } from "../smoke/lib/stack.mjs";

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: { check: { type: "boolean", default: false }, help: { type: "boolean", short: "h", default: false } },
});
if (opts.help) {
  process.stdout.write("usage: npm run demo [-- [--check] [<target git repo>]]\n");
  process.exit(0);
}

const say = (msg) => process.stdout.write(`[embark demo] ${msg}\n`);
const STATE = join(ROOT, ".embark-demo");

const DEMO_SCRIPT = {
  turns: [
    {
      tool_calls: [
        {
          name: "bash",
          arguments: { command: "echo \"embark's scripted demo model was here ($(date -u +%FT%TZ))\" >> EMBARK_DEMO.txt && ls" },
        },
      ],
    },
    {
      text:
        "[embark demo model — scripted, not a real LLM] I received your task: “{{last_user_text}}”. " +
        "I ran one bash tool call in the runner's workspace, which appended a line to EMBARK_DEMO.txt. " +
        "Set ANTHROPIC_API_KEY or OPENAI_API_KEY and rerun the demo to use a real model.",
    },
  ],
};

/**
 * Which model the runner uses, and the credential for its auth profile. Pi's
 * own table says which environment variable holds each provider's key; the
 * key goes into the runner's profile because the runner gives Pi a scrubbed
 * environment.
 */
async function chooseModel() {
  const { getEnvApiKey, findEnvKeys } = await import("@mariozechner/pi-ai");
  const env = process.env;
  let provider;
  let model;
  if (env.EMBARK_PROVIDER || env.EMBARK_MODEL) {
    if (!env.EMBARK_PROVIDER || !env.EMBARK_MODEL) throw new Error("set both EMBARK_PROVIDER and EMBARK_MODEL, or neither");
    [provider, model] = [env.EMBARK_PROVIDER, env.EMBARK_MODEL];
  } else if (getEnvApiKey("anthropic")) {
    [provider, model] = ["anthropic", "claude-sonnet-4-5"];
  } else if (getEnvApiKey("openai")) {
    [provider, model] = ["openai", "gpt-5.1"];
  }
  if (!provider || provider === "fake") return { provider: "fake", model: "fake-model", auth: {}, real: false };
  const key = getEnvApiKey(provider);
  if (!key) {
    const vars = findEnvKeys(provider) ?? [];
    throw new Error(
      `no API key for provider ${provider} in the environment: set ${vars.length ? vars.join(" or ") : "its API key variable"}`,
    );
  }
  return { provider, model, auth: { [provider]: { type: "api_key", key } }, real: true };
}

function targetRepo() {
  if (positionals[0]) {
    const path = resolve(positionals[0]);
    execFileSync("git", ["-C", path, "rev-parse", "--show-toplevel"], { stdio: "ignore" });
    return path;
  }
  const dir = join(STATE, "repo");
  if (!existsSync(join(dir, "work", ".git"))) fixtureRepo(dir);
  return join(dir, "work");
}

async function main() {
  if (!existsSync(PI_BIN)) {
    say("installing npm packages (Pi 0.73.1 and the extension's tools): npm ci");
    execFileSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: ROOT, stdio: "inherit" });
  }
  say("building embark (cargo build --release); the first build takes a few minutes");
  const bin = buildBinaries({ release: true });
  mkdirSync(STATE, { recursive: true });
  const repo = targetRepo();
  const choice = await chooseModel();

  const profileFiles = {};
  let model;
  if (!choice.real) {
    model = await startFakeModel(STATE, DEMO_SCRIPT);
    profileFiles["models.json"] = fakeModels(model.baseUrl);
    say(`no model credentials found: using embark's SCRIPTED DEMO MODEL (not a real LLM) on ${model.baseUrl}`);
  } else {
    say(`using the real model ${choice.provider}/${choice.model}`);
  }
  if (Object.keys(choice.auth).length) profileFiles["auth.json"] = choice.auth;

  const { broker, secrets, spaces } = await startBrokerAndRunner(STATE, bin, {
    label: "demo",
    profile: profileFiles,
    runnerName: "demo-runner",
  });
  say(`broker ${broker.url} (SQLite ${join(STATE, "broker.db")}), runner spaces ${spaces}`);

  const laptopAgent = join(STATE, "laptop-agent");
  mkdirSync(laptopAgent, { recursive: true });
  if (model) writeFakePiConfig(laptopAgent, model.baseUrl, { defaultProvider: "fake", defaultModel: "fake-model" });
  const env = {
    ...process.env,
    PI_CODING_AGENT_DIR: laptopAgent,
    PI_OFFLINE: "1",
    EMBARK_SIDECAR_PATH: join(bin, "embark-sidecar"),
    // The demo's own settings only, not the developer's ~/.config/embark/config.toml.
    EMBARK_CONFIG: emptyConfig(STATE, "laptop"),
    EMBARK_BROKER_URL: broker.url,
    EMBARK_CLIENT_SECRET: secrets.client,
    EMBARK_PROFILE: "default",
    EMBARK_PROVIDER: choice.provider,
    EMBARK_MODEL: choice.model,
  };
  const piArgs = ["-e", join(ROOT, "extension-shim")];

  if (opts.check || !process.stdin.isTTY) {
    await roundTrip(repo, env, piArgs);
    return;
  }
  say(`opening Pi in ${repo}. Try:\n    /embark "add a file hello.txt that says hi"\n    /embark status\n  Quit Pi (Ctrl+D) to stop the broker and runner.`);
  const pi = spawn(PI_BIN, piArgs, { cwd: repo, env, stdio: "inherit" });
  await new Promise((done) => pi.on("exit", done));
}

/** One task's round trip through laptop Pi in RPC mode, printed as it goes. */
async function roundTrip(repo, env, piArgs) {
  const pi = PiRpc.start({ piBin: PI_BIN, cwd: repo, env, args: [...piArgs, "--no-session"], logPath: join(STATE, "laptop-pi.log") });
  const prompt = "add a file hello.txt that says hi";
  say(`/embark "${prompt}"`);
  const submitted = await pi.embark(JSON.stringify(prompt));
  for (const note of submitted.notes) process.stdout.write(`${note.message}\n`);
  const id = submittedTaskId(submitted);
  if (!id) throw new Error("the submit did not name a task");
  const { status, state } = await pollStatus(pi, id, 300_000);
  say(`/embark status ${id}`);
  for (const note of status.notes) process.stdout.write(`${note.message}\n`);
  for (const message of status.messages) process.stdout.write(`${message.content}\n`);
  if (state !== "succeeded") throw new Error(`task ${id} ended ${state ?? "unfinished"}`);
}

main()
  .then(() => stopAll())
  .catch(async (err) => {
    await stopAll();
    process.stderr.write(`[embark demo] failed: ${err.message}\nlogs: ${STATE}/*.log\n`);
    process.exit(1);
  });
