#!/usr/bin/env node
// bench:live — live event latency, runner append → the attach widget updated,
// measured two ways side by side in one run, interleaved so machine load hits
// both alike:
// - through the shim in real `pi --mode rpc`: the append's POST → the
//   `setWidget` extension UI request naming that event on Pi's stdout
//   (broker tail → sidecar → `embark.live` → shim → Pi's RPC UI bridge);
// - the baseline, the sidecar alone: a `embark-sidecar --stdio` of its own,
//   attached and watching, → its `embark.live` notification with that widget.
// Each leg has its own task of one broker, claimed by this script playing the
// runner over the broker's HTTP API. Then the sidecar's subscription against
// the broker's session tail alone (`sidecar/examples/live_latency.rs`, same
// build). Target (issue 9): p99 ≤ 100 ms.
// Release build by default, BENCH_DEBUG=1 for debug; BENCH_RUNS sets the appends per leg (default 200).

import { execFileSync, spawn } from "node:child_process";
import { join } from "node:path";

import { lineReader, smokeScript } from "./lib/process.mjs";
import { ROOT, buildBinaries, emptyConfig, fixtureRepo, requirePi, startBroker, startLaptopPi } from "./lib/stack.mjs";
import { api } from "./lib/tasks.mjs";

const NAME = "bench:live";
const RUNS = Number(process.env.BENCH_RUNS ?? 200);
const RELEASE = !process.env.BENCH_DEBUG;
const { dir, step, fail, run } = smokeScript(NAME, "embark-bench-live-");
const secrets = { client: "bench-client-secret-0123456789", enrollment: "bench-enroll-secret-0123456789" };

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const ms = (x) => `${x.toFixed(2)} ms`;

/**
 * Calls `onLine(line, at)` for each stdout line of `child` as it arrives,
 * `at` being `performance.now()` when its chunk was read.
 */
function timedLines(child, onLine) {
  let buffer = "";
  child.stdout.on("data", (chunk) => {
    const at = performance.now();
    buffer += chunk.toString("utf8");
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      onLine(buffer.slice(0, nl), at);
      buffer = buffer.slice(nl + 1);
    }
  });
}

/** Arrival times by step number, and a wait for one. */
function arrivals() {
  const seen = new Map();
  const waiting = new Map();
  return {
    saw(n, at) {
      if (seen.has(n)) return;
      seen.set(n, at);
      waiting.get(n)?.(at);
    },
    until(n, what) {
      if (seen.has(n)) return Promise.resolve(seen.get(n));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${what}: no widget for step ${n} within 20 s`)), 20_000);
        waiting.set(n, (at) => {
          clearTimeout(timer);
          resolve(at);
        });
      });
    },
  };
}

/** The step number a widget's lines show (`tool: bash {"command":"step N"}`), if any. */
const stepOf = (lines) => Number((lines ?? []).join("\n").match(/"command":"step (\d+)"/)?.[1] ?? NaN);

/** Claims the next queued task as the runner `token` enrolled. */
async function claimNext(broker, token) {
  const claim = await api(broker.url, token, "/v1/runners/claim", { wait_ms: 5_000 });
  if (!claim?.task) fail("no task to claim");
  return claim;
}

function appendStep(broker, claim, n) {
  return api(broker.url, claim.callback_token, `/v1/tasks/${claim.task.id}/events`, {
    batch_id: `${claim.attempt}-${n}`,
    events: [{ kind: "tool_start", payload: { tool_call_id: `t${n}`, tool_name: "bash", args: { command: `step ${n}` } } }],
  });
}

/** The sidecar alone over stdio: hello, submit, attach, watch; widget arrivals by step. */
async function bareSidecar(bin, broker, repo) {
  const child = spawn(join(bin, "embark-sidecar"), ["--stdio", "--config", emptyConfig(dir, "sidecar")], {
    cwd: repo.work,
    stdio: ["pipe", "pipe", "ignore"],
    env: {
      PATH: process.env.PATH,
      HOME: dir,
      EMBARK_BROKER_URL: broker.url,
      EMBARK_CLIENT_SECRET: secrets.client,
      EMBARK_STATE_DIR: join(dir, "sidecar-state"),
      EMBARK_LOG: "warn",
    },
  });
  const seen = arrivals();
  const answers = new Map();
  timedLines(child, (line, at) => {
    const message = JSON.parse(line);
    if (message.id !== undefined) return answers.get(message.id)?.(message);
    const widget = message.params?.result?.view?.widget;
    if (message.method === "embark.live" && widget?.lines) seen.saw(stepOf(widget.lines), at);
  });
  let id = 0;
  const call = (method, params) =>
    new Promise((resolve, reject) => {
      const mine = ++id;
      answers.set(mine, (answer) => (answer.error ? reject(new Error(`${method}: ${answer.error.message}`)) : resolve(answer.result)));
      child.stdin.write(`${JSON.stringify({ jsonrpc: "2.0", id: mine, method, params })}\n`);
    });
  const session = { session_id: "bench-live-sidecar", cwd: repo.work };
  await call("embark.hello", { protocol: 1 });
  await call("embark.command", { line: `"bench live, sidecar" --provider fake --model fake-model`, session });
  return { child, seen, attach: () => call("embark.command", { line: "attach", session }), watch: () => call("embark.watch", { session }) };
}

async function main() {
  const piBin = requirePi();
  step(`building binaries (${RELEASE ? "release" : "debug"})`);
  const bin = buildBinaries({ release: RELEASE });
  const repo = fixtureRepo(join(dir, "repo"));
  const broker = await startBroker(dir, bin, secrets);
  const { runner_token: token } = await api(broker.url, secrets.enrollment, "/v1/runners/enroll", { name: "bench-runner" });

  // Leg 1, the sidecar alone: its task first in the queue.
  const bare = await bareSidecar(bin, broker, repo);
  const bareClaim = await claimNext(broker, token);
  await bare.attach();
  await bare.watch();

  // Leg 2, Pi with the shim: its own task, attached; the shim watches by itself.
  const pi = startLaptopPi(dir, { piBin, bin, repo, broker, secrets });
  const viaPi = arrivals();
  timedLines(pi.proc.child, (line, at) => {
    if (!line.includes('"setWidget"')) return;
    const request = JSON.parse(line);
    if (request.type === "extension_ui_request" && request.method === "setWidget") viaPi.saw(stepOf(request.widgetLines), at);
  });
  await pi.embark(JSON.stringify("bench live, through Pi"));
  const piClaim = await claimNext(broker, token);
  const attached = await pi.embark("attach");
  if (!attached.widgets.length) fail(`attach set no widget: ${JSON.stringify(attached.notes)}`);
  step(`sidecar task ${bareClaim.task.id}, Pi task ${piClaim.task.id}; ${RUNS} appends each, interleaved`);

  const sidecarMs = [];
  const piMs = [];
  for (let n = 1; n <= RUNS; n++) {
    let sent = performance.now();
    const viaSidecar = bare.seen.until(n, "the sidecar");
    await appendStep(broker, bareClaim, n);
    sidecarMs.push((await viaSidecar) - sent);
    sent = performance.now();
    const throughPi = viaPi.until(n, "Pi");
    await appendStep(broker, piClaim, n);
    piMs.push((await throughPi) - sent);
  }
  bare.child.stdin.end();

  const [p50, p99] = [quantile(piMs, 0.5), quantile(piMs, 0.99)];
  const [s50, s99] = [quantile(sidecarMs, 0.5), quantile(sidecarMs, 0.99)];
  step(`runner append → setWidget on Pi's stdout, through the shim in pi --mode rpc: p50 ${ms(p50)}, p99 ${ms(p99)}`);
  step(`baseline, the sidecar alone (embark.live widget): p50 ${ms(s50)}, p99 ${ms(s99)}`);
  step(`ratio Pi/sidecar: p50 ${(p50 / s50).toFixed(2)}x, p99 ${(p99 / s99).toFixed(2)}x; target p99 ≤ 100 ms: ${p99 <= 100 ? "met" : "NOT met"}`);

  step("the sidecar's subscription against the broker's session tail alone (sidecar/examples/live_latency.rs)");
  const cargo = ["run", "-q", "-p", "embark-sidecar", "--example", "live_latency", ...(RELEASE ? ["--release"] : [])];
  execFileSync("cargo", cargo, { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, BENCH_RUNS: String(RUNS) } });
}

run(main);
