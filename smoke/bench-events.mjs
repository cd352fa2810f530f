#!/usr/bin/env node
// bench:events — how many event rows one streamed answer costs, against the
// baseline of forwarding Pi's stream as it comes (one row per Pi event).
//
// The scripted model streams a long answer in small pieces. Baseline: real
// Pi in RPC mode on that script, counting the events it emits. embark: the
// real runner runs real Pi on the same script and reports to the real
// broker; we count the rows the broker stored. Both runs are side by side in
// this script, and the ratio is printed.

import { join } from "node:path";

import { smokeScript } from "./lib/process.mjs";
import { PiRpc } from "./lib/pi-rpc-client.mjs";
import { PI_BIN, buildBinaries, fakeModels, fixtureRepo, requirePi, startBrokerAndRunner, startFakeModel, writeFakePiConfig } from "./lib/stack.mjs";

const CHARS = Number(process.env.BENCH_CHARS ?? 24_000);
const PIECE = 6; // the fake model's text piece size
const CHUNK_DELAY_MS = Number(process.env.BENCH_CHUNK_DELAY_MS ?? 1);

const { dir, run } = smokeScript("bench:events", "embark-bench-events-");

async function api(url, secret, path, body) {
  const res = await fetch(`${url}${path}`, {
    method: body ? "POST" : "GET",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

async function main() {
  requirePi();
  const bin = buildBinaries();
  const repo = fixtureRepo(join(dir, "repo"));
  const text = Array.from({ length: CHARS }, (_, i) => "abcdefghij klmnopqrst"[i % 21]).join("");
  const model = await startFakeModel(dir, { turns: [{ text, chunk_delay_ms: CHUNK_DELAY_MS }] });
  const { broker, secrets } = await startBrokerAndRunner(dir, bin, {
    label: "bench",
    profile: { "models.json": fakeModels(model.baseUrl) },
  });

  const task = await api(broker.url, secrets.client, "/v1/tasks", {
    repo_url: repo.origin,
    commit: repo.head,
    prompt: "answer at length",
    intent: { auth_profile: "default", provider: "fake", model: "fake-model" },
    session_id: "bench",
  });
  const started = Date.now();
  let current = task;
  while (!["succeeded", "failed", "cancelled"].includes(current.state)) {
    if (Date.now() - started > 180_000) throw new Error(`task still ${current.state} after 180 s`);
    await new Promise((r) => setTimeout(r, 250));
    current = await api(broker.url, secrets.client, `/v1/tasks/${task.id}`);
  }
  if (current.state !== "succeeded") throw new Error(`task ${current.state}: ${current.outcome?.reason}`);

  const events = [];
  for (let after = 0; ; ) {
    const page = await api(broker.url, secrets.client, `/v1/tasks/${task.id}/events?after=${after}&limit=1000`);
    events.push(...page.events);
    if (!page.events.length || page.events.at(-1).seq >= page.last_seq) break;
    after = page.events.at(-1).seq;
  }
  const elapsed = (Date.now() - started) / 1000;
  const baseline = await piBaseline(model.baseUrl, repo.work);
  const deltas = Math.ceil(CHARS / PIECE);
  const deltaEvents = events.filter((e) => e.kind === "assistant_delta");
  const storedBytes = events.reduce((n, e) => n + JSON.stringify(e.payload).length, 0);
  const lines = [
    `answer: ${CHARS} chars streamed as ${deltas} pieces, ${CHUNK_DELAY_MS} ms apart; embark round trip ${elapsed.toFixed(1)} s`,
    `baseline, Pi's own RPC stream: ${baseline.events} events (${baseline.updates} message_update), ${baseline.bytes} bytes`,
    `embark, rows stored by the broker: ${events.length} (${deltaEvents.length} assistant_delta), ${storedBytes} payload bytes`,
    `ratio: ${(baseline.events / events.length).toFixed(1)}x fewer rows, ${(baseline.bytes / storedBytes).toFixed(1)}x fewer bytes`,
  ];
  process.stdout.write(lines.map((l) => `[bench:events] ${l}`).join("\n") + "\n");
  const joined = deltaEvents.map((e) => e.payload.text).join("");
  if (joined !== text) throw new Error("the coalesced deltas do not add up to the streamed text");
}

/** Real Pi in RPC mode on the same script: the events a forward-everything runner would store. */
async function piBaseline(baseUrl, cwd) {
  const agent = writeFakePiConfig(join(dir, "baseline-agent"), baseUrl);
  const pi = PiRpc.start({
    piBin: PI_BIN,
    cwd,
    args: ["--provider", "fake", "--model", "fake-model", "--no-session"],
    env: { ...process.env, PI_CODING_AGENT_DIR: agent, PI_OFFLINE: "1" },
    logPath: join(dir, "baseline-pi.log"),
  });
  await pi.call({ type: "prompt", message: "answer at length" });
  const counted = { events: 0, updates: 0, bytes: 0 };
  for (;;) {
    const line = await pi.proc.lines(120_000);
    if (line === null) throw new Error("baseline Pi exited before agent_end");
    const event = JSON.parse(line);
    counted.events += 1;
    counted.bytes += line.length;
    if (event.type === "message_update") counted.updates += 1;
    if (event.type === "agent_end") return counted;
  }
}

run(main);
