#!/usr/bin/env node
// A fake `docker` CLI for the runner's docker mode, where no Docker engine
// runs (CI, this machine). `installFakeDocker` in smoke/lib/stack.mjs puts it
// on PATH as `docker`, behind a wrapper that sets the FAKE_DOCKER_* variables
// (the runner gives the docker CLI only the engine's own). It records every
// invocation and plays the engine's part in the container lifecycle:
//
// - every call appends {"argv": [...], "at": <ms>} to $FAKE_DOCKER_LOG;
// - `run … --name N … --mount type=bind,source=S,target=T … IMAGE CMD ARGS`
//   starts the "container": CMD on this machine, with the container's paths
//   (under T) mapped to the host's (under S) in the working directory,
//   environment and arguments, only the --env/--env-file variables, and
//   stdio passed through (RPC works as with `-i`). `pi` is $FAKE_DOCKER_PI.
//   A network other than `host` is the container's own, as with an engine:
//   CMD runs under `bwrap --unshare-net` (when bwrap is on PATH), so it
//   has a loopback of its own and cannot reach this machine's 127.0.0.1.
//   With FAKE_DOCKER_PI_MODE=transcript the container is instead the
//   scripted Pi of smoke/fake-pi.mjs, which answers at once (for timings
//   that must not include a real Pi). SIGTERM/SIGINT are passed on (like docker's sig-proxy). The
//   container is "running" while $FAKE_DOCKER_STATE/N.pid exists; it is
//   removed when CMD exits (--rm);
// - `rm -f N` kills a running container's process group and removes it, or
//   says `No such container` (exit 1), as the engine does;
// - anything else succeeds silently.

import { spawn } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { serve } from "../fake-pi.mjs";

const argv = process.argv.slice(2);
if (process.env.FAKE_DOCKER_LOG) appendFileSync(process.env.FAKE_DOCKER_LOG, JSON.stringify({ argv, at: Date.now() }) + "\n");
const state = process.env.FAKE_DOCKER_STATE ?? "/nonexistent";

const VALUED = new Set(["--name", "--label", "--network", "--user", "--cap-drop", "--security-opt", "--mount", "--workdir", "-w", "--env", "-e", "--env-file"]);

function run(args) {
  const opts = { env: [], envFiles: [], mounts: [] };
  let i = 0;
  for (; i < args.length && args[i].startsWith("-"); i++) {
    const flag = args[i];
    if (!VALUED.has(flag)) continue; // --rm, -i, --init
    const value = args[++i];
    if (flag === "--name") opts.name = value;
    else if (flag === "--network") opts.network = value;
    else if (flag === "--workdir" || flag === "-w") opts.workdir = value;
    else if (flag === "--env" || flag === "-e") opts.env.push(value);
    else if (flag === "--env-file") opts.envFiles.push(value);
    else if (flag === "--mount") opts.mounts.push(Object.fromEntries(value.split(",").map((kv) => kv.split("="))));
  }
  const [, command, ...commandArgs] = args.slice(i); // image, then the command
  const toHost = (text) => {
    for (const m of opts.mounts) if (text === m.target || text.startsWith(m.target + "/")) return m.source + text.slice(m.target.length);
    return text;
  };
  const env = { PATH: process.env.PATH };
  for (const file of opts.envFiles) for (const line of readFileSync(file, "utf8").split("\n")) if (line.includes("=")) opts.env.push(line);
  for (const pair of opts.env) {
    const at = pair.indexOf("=");
    env[pair.slice(0, at)] = toHost(pair.slice(at + 1));
  }
  mkdirSync(state, { recursive: true });
  const pidFile = join(state, `${opts.name}.pid`);
  if (process.env.FAKE_DOCKER_PI_MODE === "transcript") return scriptedPi(pidFile);

  // `pi` is the image's Pi, as the command or as what the runner's relay (mounted in) starts.
  const inHost = (arg) => (arg === "pi" ? process.env.FAKE_DOCKER_PI : toHost(arg));
  let [program, programArgs] = [inHost(command), commandArgs.map(inHost)];
  const bwrap = (process.env.PATH ?? "").split(":").map((d) => join(d, "bwrap")).find((p) => existsSync(p));
  if (opts.network !== "host" && bwrap) [program, programArgs] = [bwrap, ["--dev-bind", "/", "/", "--unshare-net", "--die-with-parent", "--", program, ...programArgs]];
  const child = spawn(program, programArgs, { cwd: toHost(opts.workdir ?? "/"), env, stdio: "inherit", detached: true });
  writeFileSync(pidFile, String(child.pid));
  for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => child.kill(signal));
  child.on("exit", (code, signal) => {
    rmSync(pidFile, { force: true });
    process.exit(code ?? 128 + (signal === "SIGKILL" ? 9 : 15));
  });
}

/** The container is smoke/fake-pi.mjs, which answers at once. */
function scriptedPi(pidFile) {
  writeFileSync(pidFile, String(process.pid));
  serve(() => {
    rmSync(pidFile, { force: true });
    process.exit(0);
  });
}

function rm(args) {
  const names = args.filter((a) => !a.startsWith("-"));
  let missing = false;
  for (const name of names) {
    const pidFile = join(state, `${name}.pid`);
    if (!existsSync(pidFile)) {
      process.stderr.write(`Error response from daemon: No such container: ${name}\n`);
      missing = true;
      continue;
    }
    const pid = Number(readFileSync(pidFile, "utf8"));
    try {
      process.kill(-pid, "SIGKILL"); // the container's process group
    } catch {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    rmSync(pidFile, { force: true });
    process.stdout.write(`${name}\n`);
  }
  process.exit(missing ? 1 : 0);
}

switch (argv[0]) {
  case "run":
    run(argv.slice(1));
    break;
  case "rm":
    rm(argv.slice(1));
    break;
  default:
    process.exit(0);
}
