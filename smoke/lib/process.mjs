// Child processes for the smoke scripts and the demo: started with piped
// stdio (never inherited), stderr kept in a log file, stopped by their own PID.

import { spawn } from "node:child_process";
import { createWriteStream, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const started = [];

/** Spawns `cmd args`, logging stderr to `logPath`; returns { child, lines } where lines() yields stdout lines. */
export function start(name, cmd, args, { cwd, env, logPath }) {
  const child = spawn(cmd, args, { cwd, env, stdio: ["pipe", "pipe", "pipe"] });
  const log = createWriteStream(logPath);
  child.stderr.pipe(log);
  const proc = { name, child, logPath, lines: lineReader(child.stdout) };
  child.on("error", (err) => log.write(`spawn error: ${err.message}\n`));
  started.push(proc);
  return proc;
}

/** Splits a byte stream on "\n" only (not readline: U+2028/2029 are not line ends in NDJSON). */
export function lineReader(stream) {
  const waiting = [];
  const queue = [];
  let rest = "";
  let ended = false;
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    rest += chunk;
    let nl;
    while ((nl = rest.indexOf("\n")) >= 0) {
      let line = rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      const w = waiting.shift();
      if (w) w.resolve(line);
      else queue.push(line);
    }
  });
  stream.on("end", () => {
    ended = true;
    for (const w of waiting.splice(0)) w.resolve(null);
  });
  /** Next line, or null at end of stream; rejects after `timeoutMs`. */
  return (timeoutMs = 30_000) => {
    if (queue.length) return Promise.resolve(queue.shift());
    if (ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const entry = { resolve: (v) => (clearTimeout(timer), resolve(v)) };
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(entry), 1);
        reject(new Error(`no line within ${timeoutMs} ms`));
      }, timeoutMs);
      waiting.push(entry);
    });
  };
}

/** Reads the first stdout line as JSON (the ready line of broker and fake model). */
export async function readyLine(proc, timeoutMs = 60_000) {
  const line = await proc.lines(timeoutMs).catch((err) => {
    throw new Error(`${proc.name} did not get ready: ${err.message}; see ${proc.logPath}`);
  });
  if (line === null) throw new Error(`${proc.name} exited before it was ready; see ${proc.logPath}`);
  return JSON.parse(line);
}

/** Stops every process started here: SIGTERM by PID, SIGKILL after a grace period. */
export async function stopAll(graceMs = 3000) {
  await Promise.all(
    started.splice(0).reverse().map(
      (proc) =>
        new Promise((resolve) => {
          const { child } = proc;
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
          child.once("exit", () => (clearTimeout(timer), resolve()));
          child.stdin?.end();
          child.kill("SIGTERM");
        }),
    ),
  );
}

/**
 * A smoke script's (or benchmark's) frame: its temporary directory, `step` and
 * `fail`, and `run(main, hooks)`, which stops every process started, removes
 * the directory on success (kept on failure, or with EMBARK_SMOKE_KEEP=1) and
 * exits 1 on failure. `hooks.onFailure` runs first on a failure (it may return
 * more to print, e.g. a last screen); `hooks.always` runs on both paths, before
 * the processes are stopped.
 */
export function smokeScript(name, prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const step = (msg) => process.stdout.write(`[${name}] ${msg}\n`);
  const fail = (msg) => {
    throw new Error(msg);
  };
  const run = (main, { onFailure, always } = {}) =>
    main()
      .then(async () => {
        await always?.();
        await stopAll();
        if (!process.env.EMBARK_SMOKE_KEEP) rmSync(dir, { recursive: true, force: true });
        step("ok");
      })
      .catch(async (error) => {
        const more = (await onFailure?.()) ?? "";
        await always?.();
        await stopAll();
        console.error(`[${name}] FAILED: ${error.stack ?? error}${more}\n(logs kept in ${dir})`);
        process.exit(1);
      });
  return { dir, step, fail, run };
}
