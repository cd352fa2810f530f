// The embark stack on one machine, as the smoke scripts and the demo run it:
// the real binaries, real Pi, real git, the scripted fake model on 127.0.0.1.
// The fixture repository and the fake model's Pi configuration come from
// testkit/fixtures/*.json, the files the Rust tests read too.

import { execFileSync, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { PiRpc } from "./pi-rpc-client.mjs";
import { lineReader, readyLine, start } from "./process.mjs";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PI_BIN = join(ROOT, "node_modules", ".bin", "pi");
const FIXTURES = join(ROOT, "testkit", "fixtures");
const fixture = (name) => JSON.parse(readFileSync(join(FIXTURES, name), "utf8"));
/** Pi settings with retries off, so a scripted model error ends the run at once. */
export const PI_SETTINGS = fixture("pi-settings.json");
/** How a fixture repository is made (testkit/fixtures/README.md). */
const REPO = fixture("repo.json");

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

/** Throws unless bubblewrap is installed (the bwrap-mode smokes need it). */
export function requireBwrap() {
  const found = execFileSync("sh", ["-c", "command -v bwrap || true"], { encoding: "utf8" }).trim();
  if (!found) throw new Error("bwrap is not installed: apt-get install bubblewrap");
}

/** Runs git in `cwd` with the fixtures' git environment and returns trimmed stdout. */
export function git(cwd, ...args) {
  return execFileSync("git", args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, ...REPO.env },
    stdio: ["ignore", "pipe", "pipe"],
  }).trim();
}

/** The fixture repository in `dir`: a working clone with one pushed commit and a bare `origin` beside it. */
export function fixtureRepo(dir) {
  const place = (text) => text.replaceAll("{dir}", dir);
  mkdirSync(dir, { recursive: true });
  for (const step of REPO.steps) {
    if ("git" in step) git(place(step.in), ...step.git.map(place));
    else writeFileSync(place(step.write), step.text);
  }
  const work = place(REPO.work);
  return { work, origin: place(REPO.origin), head: git(work, "rev-parse", "HEAD") };
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

/** Pi's models.json for the fake model at `baseUrl` (…/v1): provider `fake`, model `fake-model`. */
export function fakeModels(baseUrl) {
  const models = fixture("fake-models.json");
  models.providers.fake.baseUrl = baseUrl;
  return models;
}

/**
 * Makes `dir` a Pi config dir (PI_CODING_AGENT_DIR) for the fake model at
 * `baseUrl`: its models.json, and {@link PI_SETTINGS} plus `settings`.
 */
export function writeFakePiConfig(dir, baseUrl, settings = {}) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "models.json"), JSON.stringify(fakeModels(baseUrl), null, 2));
  writeFileSync(join(dir, "settings.json"), JSON.stringify({ ...PI_SETTINGS, ...settings }, null, 2));
  return dir;
}

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

/** Starts a broker on SQLite in `dir`; `env` adds or overrides variables (e.g. its repo transports). */
export async function startBroker(dir, bin, secrets, listen = "127.0.0.1:0", env = {}) {
  const args = ["--listen", listen, "--db", join(dir, "broker.db"), "--config", emptyConfig(dir, "broker")];
  const proc = start("embark-broker", join(bin, "embark-broker"), args, {
    cwd: dir,
    env: {
      ...process.env,
      EMBARK_CLIENT_SECRET: secrets.client,
      EMBARK_RUNNER_ENROLLMENT_SECRET: secrets.enrollment,
      // The fixture repositories are local paths on this machine.
      EMBARK_BROKER_REPO_TRANSPORTS: "https,ssh,git,local",
      RUST_LOG: process.env.RUST_LOG ?? "info",
      ...env,
    },
    logPath: join(dir, "broker.log"),
  });
  const { listening } = await readyLine(proc);
  return { proc, url: `http://${listening}` };
}

/**
 * Starts a runner. Fixture repositories are local, so `file` is among its git
 * protocols; `pi` is the Pi program (the pinned one by default), `args` adds
 * flags (e.g. `--isolation bwrap`), `env` variables, `log` names its log
 * file in `dir`, `gitProtocols` replaces its git protocols.
 */
export function startRunner(dir, bin, { brokerUrl, enrollmentSecret, spaces, profiles, name = "local-runner", pi = requirePi(), args = [], env = {}, log = "runner.log", gitProtocols = "https,ssh,git,file" }) {
  const argv = ["--broker-url", brokerUrl, "--spaces", spaces, "--profiles", profiles, "--pi", pi, "--name", name, "--config", emptyConfig(dir, "runner"), "--git-protocols", gitProtocols, ...args];
  return start("embark-runner", join(bin, "embark-runner"), argv, {
    cwd: dir,
    env: { ...process.env, EMBARK_RUNNER_ENROLLMENT_SECRET: enrollmentSecret, RUST_LOG: process.env.RUST_LOG ?? "info", ...env },
    logPath: join(dir, log),
  });
}

/**
 * Puts the fake docker CLI (smoke/fake-docker/docker.mjs) on a PATH of its
 * own in `dir`; returns the env a runner needs to use it, and where it logs.
 */
export function installFakeDocker(dir, { mode = "" } = {}) {
  const binDir = join(dir, "fake-docker-bin");
  mkdirSync(binDir, { recursive: true });
  const log = join(dir, "fake-docker.log");
  const state = join(dir, "fake-docker-state");
  // The runner gives the docker CLI only the engine's variables, so the
  // fake's settings live in its wrapper.
  const quote = (value) => `'${String(value).replaceAll("'", `'\\''`)}'`;
  const wrapper = [
    "#!/bin/sh",
    `export FAKE_DOCKER_LOG=${quote(log)} FAKE_DOCKER_STATE=${quote(state)} FAKE_DOCKER_PI=${quote(requirePi())} FAKE_DOCKER_PI_MODE=${quote(mode)}`,
    `exec ${quote(process.execPath)} ${quote(join(ROOT, "smoke", "fake-docker", "docker.mjs"))} "$@"`,
    "",
  ].join("\n");
  writeFileSync(join(binDir, "docker"), wrapper, { mode: 0o755 });
  return {
    env: { PATH: `${binDir}:${process.env.PATH}` },
    log,
    state,
    calls: () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : []),
  };
}

/**
 * A broker and one runner in `dir`: secrets named after `label`, the runner's
 * `default` auth profile holding `profile` files (settings default to
 * {@link PI_SETTINGS}), its task spaces in `dir/spaces`; `runnerName` is optional.
 */
export async function startBrokerAndRunner(dir, bin, { label, profile, runnerName, runnerArgs = [], runnerEnv = {} }) {
  const secrets = { client: `${label}-client-secret-0123456789`, enrollment: `${label}-enrollment-secret-0123456789` };
  const broker = await startBroker(dir, bin, secrets);
  const profiles = join(dir, "profiles");
  writeProfile(profiles, "default", { "settings.json": PI_SETTINGS, ...profile });
  const spaces = join(dir, "spaces");
  const runner = startRunner(dir, bin, { brokerUrl: broker.url, enrollmentSecret: secrets.enrollment, spaces, profiles, name: runnerName, args: runnerArgs, env: runnerEnv });
  return { broker, secrets, spaces, profiles, runner };
}

/**
 * Pi on the "laptop": RPC mode with the /embark extension, its own Pi config
 * dir and HOME under `dir` (nothing from the real ones), the sidecar pointed
 * at `broker` with the client secret and the fake model's intent. No session
 * file unless `sessionDir` is given (Pi's `--session-dir`); `modelBaseUrl`
 * gives the laptop's Pi a fake model of its own; `args` go after the rest
 * (`-c` to continue the latest session).
 */
export function startLaptopPi(dir, { piBin, bin, repo, broker, secrets, log = "laptop-pi.log", sessionDir, modelBaseUrl, args = [] }) {
  const laptopAgent = join(dir, "laptop-agent");
  const laptopHome = join(dir, "laptop-home");
  mkdirSync(laptopAgent, { recursive: true });
  mkdirSync(laptopHome, { recursive: true });
  writeFileSync(join(laptopAgent, "settings.json"), JSON.stringify(PI_SETTINGS));
  // The laptop's own model (for a turn that makes Pi write its session file).
  if (modelBaseUrl) writeFileSync(join(laptopAgent, "models.json"), JSON.stringify(fakeModels(modelBaseUrl)));
  const session = sessionDir ? ["--session-dir", sessionDir] : ["--no-session"];
  return PiRpc.start({
    piBin,
    cwd: repo.work,
    args: ["-e", join(ROOT, "extension-shim"), ...session, ...args],
    logPath: join(dir, log),
    env: {
      ...process.env,
      HOME: laptopHome,
      PI_CODING_AGENT_DIR: laptopAgent,
      PI_OFFLINE: "1",
      EMBARK_SIDECAR_PATH: join(bin, "embark-sidecar"),
      // An empty file, not a missing one: a named config file must exist.
      EMBARK_CONFIG: emptyConfig(dir, "laptop"),
      EMBARK_BROKER_URL: broker.url,
      EMBARK_CLIENT_SECRET: secrets.client,
      EMBARK_PROFILE: "default",
      EMBARK_PROVIDER: "fake",
      EMBARK_MODEL: "fake-model",
    },
  });
}

/**
 * One sidecar over stdio in `cwd` (HOME is `dir`, no user config): hello,
 * then each line as `embark.command` of Pi session `session`; answers the
 * JSON-RPC answers of the lines, in order.
 */
export async function sidecarCommands(bin, dir, env, cwd, lines, session) {
  const child = spawn(join(bin, "embark-sidecar"), ["--stdio", "--config", emptyConfig(dir, "sidecar")], { cwd, env: { PATH: process.env.PATH, HOME: dir, ...env }, stdio: ["pipe", "pipe", "ignore"] });
  const reader = lineReader(child.stdout);
  const call = async (id, method, params) => {
    child.stdin.write(`${JSON.stringify({ jsonrpc: "2.0", id, method, params })}\n`);
    return JSON.parse(await reader(30_000));
  };
  await call(0, "embark.hello", { protocol: 1 });
  const answers = [];
  let id = 1;
  for (const line of lines) answers.push(await call(id++, "embark.command", { line, session: { session_id: session, cwd } }));
  child.stdin.end();
  return answers;
}
