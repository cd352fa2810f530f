#!/usr/bin/env node
// bench:status — what a user waits for at the keyboard, side by side in one run:
// - `/embark status` through the sidecar (NDJSON → sidecar → local broker: list,
//   record write with fsync, events → View), p50 and p99, against the baseline of
//   the same broker list and events read straight over HTTP from this process;
// - sidecar cold start: spawn to the `embark.hello` answer, against the baseline
//   of spawning `embark-sidecar --version` (process start alone).
// Interleaved, so machine load hits both alike. Target (issue 9): status p99 ≤ 16 ms.
// BENCH_RUNS sets the status calls (default 200) and starts (default 30).

import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { lineReader } from "./lib/process.mjs";
import { buildBinaries, emptyConfig, fixtureRepo, startBroker } from "./lib/stack.mjs";
import { api, submit } from "./lib/tasks.mjs";

const NAME = "bench:status";
const RUNS = Number(process.env.BENCH_RUNS ?? 200);
const STARTS = Math.max(5, Math.round(RUNS / 7));
const { dir, step, run } = smokeScript(NAME, "embark-bench-status-");
const secrets = { client: "bench-client-secret-0123456789", enrollment: "bench-enroll-secret-0123456789" };

function sidecar(bin, broker) {
  const child = spawn(join(bin, "embark-sidecar"), ["--stdio"], {
    stdio: ["pipe", "pipe", "ignore"],
    env: {
      PATH: process.env.PATH,
      EMBARK_CONFIG: emptyConfig(dir, "sidecar"),
      EMBARK_BROKER_URL: broker.url,
      EMBARK_CLIENT_SECRET: secrets.client,
      EMBARK_STATE_DIR: join(dir, "state"),
      EMBARK_LOG: "warn",
    },
  });
  const lines = lineReader(child.stdout);
  let id = 0;
  const call = async (method, params) => {
    child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }) + "\n");
    const line = await lines(20_000);
    const answer = JSON.parse(line);
    if (answer.error) throw new Error(`${method}: ${answer.error.message}`);
    return answer.result;
  };
  return { child, call };
}

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const ms = (x) => `${x.toFixed(2)} ms`;

async function main() {
  const bin = buildBinaries({ release: process.env.BENCH_DEBUG ? false : true });
  const repo = fixtureRepo(join(dir, "repo"));
  const broker = await startBroker(dir, bin, secrets);
  const session = "bench-session";
  const created = await submit(broker, secrets, repo, "bench status", { session });
  const cwd = repo.work;

  const sc = sidecar(bin, broker);
  await sc.call("embark.hello", { protocol: 1 });
  const params = { line: "status", session: { session_id: session, cwd } };
  await sc.call("embark.command", params); // warm: imports the task into the store

  const viaSidecar = [];
  const direct = [];
  for (let i = 0; i < RUNS; i++) {
    let t = performance.now();
    await sc.call("embark.command", params);
    viaSidecar.push(performance.now() - t);
    t = performance.now();
    await api(broker.url, secrets.client, `/v1/tasks?session_id=${session}&limit=100`);
    await api(broker.url, secrets.client, `/v1/tasks/${created.id}/events?after=0&limit=10`);
    direct.push(performance.now() - t);
  }
  sc.child.stdin.end();

  const cold = [];
  const bare = [];
  for (let i = 0; i < STARTS; i++) {
    let t = performance.now();
    const one = sidecar(bin, broker);
    await one.call("embark.hello", { protocol: 1 });
    cold.push(performance.now() - t);
    one.child.stdin.end();
    await new Promise((r) => one.child.once("exit", r));
    t = performance.now();
    spawnSync(join(bin, "embark-sidecar"), ["--version"], { stdio: "ignore" });
    bare.push(performance.now() - t);
  }

  const p50 = quantile(viaSidecar, 0.5);
  const p99 = quantile(viaSidecar, 0.99);
  const b50 = quantile(direct, 0.5);
  const b99 = quantile(direct, 0.99);
  step(`status via sidecar (${RUNS} calls): p50 ${ms(p50)}, p99 ${ms(p99)}`);
  step(`baseline, the same broker reads over HTTP: p50 ${ms(b50)}, p99 ${ms(b99)}`);
  step(`ratio sidecar/baseline: p50 ${(p50 / b50).toFixed(2)}x, p99 ${(p99 / b99).toFixed(2)}x; target p99 ≤ 16 ms: ${p99 <= 16 ? "met" : "NOT met"}`);
  const c50 = quantile(cold, 0.5);
  const v50 = quantile(bare, 0.5);
  step(`sidecar cold start to hello (${STARTS} starts): median ${ms(c50)}, p90 ${ms(quantile(cold, 0.9))}`);
  step(`baseline, embark-sidecar --version: median ${ms(v50)}; ratio ${(c50 / v50).toFixed(2)}x`);
}

run(main);
