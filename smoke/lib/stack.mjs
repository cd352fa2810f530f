// The embark stack on one machine, as the smoke scripts and the demo run it:
// the real binaries, real Pi, real git, the scripted fake model on 127.0.0.1.

import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { readyLine, start } from "./process.mjs";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PI_BIN = join(ROOT, "node_modules", ".bin", "pi");
/** Pi settings with retries off, so a scripted model error ends the run at once. */
export const PI_SETTINGS = { retry: { enabled: false, provider: { maxRetries: 0 } } };

/** Builds the three binaries (a no-op when up to date) and returns their directory. */
export function buildBinaries({ release = false } = {}) {
  const args = ["build", "--quiet", "-p", "embark-broker", "-p", "embark-runner", "-p", "embark-sidecar"];
  if (release) args.push("--release");
  execFileSync("cargo", args, { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"] });
  return join(ROOT, "target", release ? "release" : "debug");
}

export function requirePi() {
  if (!existsSync(PI_BIN)) throw new Error(`${PI_BIN} is missing: run \`npm ci\` in ${ROOT}`);
  return PI_BIN;
}

export function git(cwd, ...args) {
  return execFileSync("git", args, {
    cwd,
    encoding: "utf8",
    env: {
      ...process.env,
      // The developer's own git config (signing, hooks, templates) must not change fixtures.
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_CONFIG_GLOBAL: "/dev/null",
      GIT_AUTHOR_NAME: "embark-smoke",
      GIT_AUTHOR_EMAIL: "smoke@embark.invalid",
      GIT_COMMITTER_NAME: "embark-smoke",
      GIT_COMMITTER_EMAIL: "smoke@embark.invalid",
    },
    stdio: ["ignore", "pipe", "pipe"],
  }).trim();
}

/** A working repository with one pushed commit and a bare `origin` beside it. */
export function fixtureRepo(dir) {
  const origin = join(dir, "origin.git");
  const work = join(dir, "work");
  mkdirSync(work, { recursive: true });
  git(dir, "init", "-q", "--bare", "-b", "main", origin);
  git(work, "init", "-q", "-b", "main");
  writeFileSync(join(work, "README.md"), "# embark fixture\n");
  git(work, "add", "README.md");
  git(work, "commit", "-q", "-m", "initial");
  git(work, "remote", "add", "origin", origin);
  git(work, "push", "-q", "-u", "origin", "main");
  return { work, origin, head: git(work, "rev-parse", "HEAD") };
}

export async function startFakeModel(dir, script) {
  const scriptPath = join(dir, "fake-model-script.json");
  writeFileSync(scriptPath, JSON.stringify(script, null, 2));
  const proc = start("fake-model", process.execPath, [join(ROOT, "smoke", "fake-model", "server.mjs"), "--script", scriptPath, "--port", "0"], {
    cwd: dir,
    env: process.env,
    logPath: join(dir, "fake-model.log"),
  });
  const { port } = await readyLine(proc);
  return { proc, port, baseUrl: `http://127.0.0.1:${port}/v1` };
}

export const fakeModels = (baseUrl) => ({
  providers: {
    fake: {
      baseUrl,
      api: "openai-completions",
      apiKey: "fake-key",
      compat: { supportsDeveloperRole: false, supportsReasoningEffort: false },
      models: [
        {
          id: "fake-model",
          name: "embark scripted demo model (not a real LLM)",
          reasoning: false,
          input: ["text"],
          contextWindow: 128000,
          maxTokens: 4096,
          cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
        },
      ],
    },
  },
});

/**
 * Writes a runner auth profile: `files` maps file name (models.json, auth.json,
 * settings.json) to JSON. auth.json holds keys, so only its owner may read it.
 */
export function writeProfile(profilesDir, name, files) {
  const dir = join(profilesDir, name);
  mkdirSync(dir, { recursive: true });
  for (const [file, json] of Object.entries(files)) {
    const path = join(dir, file);
    writeFileSync(path, JSON.stringify(json, null, 2));
    if (file === "auth.json") chmodSync(path, 0o600);
  }
  return dir;
}

/**
 * An empty config file in `dir` for `who`: naming it (`--config`, or the
 * binary's config variable) rules out the developer's own file and any
 * `EMBARK_*CONFIG` they set. A named file must exist, so it is written here.
 */
export function emptyConfig(dir, who) {
  const path = join(dir, `${who}-config.toml`);
  writeFileSync(path, "");
  return path;
}

export async function startBroker(dir, bin, secrets, listen = "127.0.0.1:0") {
  const args = ["--listen", listen, "--db", join(dir, "broker.db"), "--config", emptyConfig(dir, "broker")];
  const proc = start("embark-broker", join(bin, "embark-broker"), args, {
    cwd: dir,
    env: {
      ...process.env,
      EMBARK_CLIENT_SECRET: secrets.client,
      EMBARK_RUNNER_ENROLLMENT_SECRET: secrets.enrollment,
      RUST_LOG: process.env.RUST_LOG ?? "info",
    },
    logPath: join(dir, "broker.log"),
  });
  const { listening } = await readyLine(proc);
  return { proc, url: `http://${listening}` };
}

export function startRunner(dir, bin, { brokerUrl, enrollmentSecret, spaces, profiles, name = "local-runner" }) {
  const args = ["--broker-url", brokerUrl, "--spaces", spaces, "--profiles", profiles, "--pi", requirePi(), "--name", name, "--config", emptyConfig(dir, "runner")];
  return start("embark-runner", join(bin, "embark-runner"), args, {
    cwd: dir,
    env: { ...process.env, EMBARK_RUNNER_ENROLLMENT_SECRET: enrollmentSecret, RUST_LOG: process.env.RUST_LOG ?? "info" },
    logPath: join(dir, "runner.log"),
  });
}

/**
 * A broker and one runner in `dir`: secrets named after `label`, the runner's
 * `default` auth profile holding `profile` files (settings default to
 * {@link PI_SETTINGS}), its task spaces in `dir/spaces`; `runnerName` is optional.
 */
export async function startBrokerAndRunner(dir, bin, { label, profile, runnerName }) {
  const secrets = { client: `${label}-client-secret-0123456789`, enrollment: `${label}-enrollment-secret-0123456789` };
  const broker = await startBroker(dir, bin, secrets);
  const profiles = join(dir, "profiles");
  writeProfile(profiles, "default", { "settings.json": PI_SETTINGS, ...profile });
  const spaces = join(dir, "spaces");
  startRunner(dir, bin, { brokerUrl: broker.url, enrollmentSecret: secrets.enrollment, spaces, profiles, name: runnerName });
  return { broker, secrets, spaces };
}
