// The broker's task API as the isolation smokes and benchmarks use it, and
// the process checks they make (all bounded; processes are found by a
// marker of the smoke's own and signalled by PID only).

import { readFileSync, readdirSync } from "node:fs";

export const FINISHED = ["succeeded", "failed", "cancelled"];

export async function api(url, secret, path, body) {
  const res = await fetch(`${url}${path}`, {
    method: body ? "POST" : "GET",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Submits `prompt` against `repo` with the fake model and `profile`. */
export function submit(broker, secrets, repo, prompt, { profile = "default", session = "smoke" } = {}) {
  return api(broker.url, secrets.client, "/v1/tasks", {
    repo_url: repo.origin,
    commit: repo.head,
    prompt,
    intent: { auth_profile: profile, provider: "fake", model: "fake-model" },
    session_id: session,
  });
}

/** Polls until the task is finished (or `timeoutMs` passes) and returns it. */
export async function waitFinished(broker, secrets, id, timeoutMs = 120_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const task = await api(broker.url, secrets.client, `/v1/tasks/${id}`);
    if (FINISHED.includes(task.state)) return task;
    if (Date.now() > until) throw new Error(`task ${id} still ${task.state} after ${timeoutMs} ms`);
    await sleep(200);
  }
}

export async function events(broker, secrets, id) {
  const all = [];
  for (let after = 0; ; ) {
    const page = await api(broker.url, secrets.client, `/v1/tasks/${id}/events?after=${after}&limit=1000`);
    all.push(...page.events);
    if (!page.events.length || page.events.at(-1).seq >= page.last_seq) return all;
    after = page.events.at(-1).seq;
  }
}

/** Waits (bounded) until `check()` is truthy; returns its value. */
export async function until(what, check, timeoutMs = 60_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(50);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** PIDs of live (non-zombie) processes whose command line holds `marker`. */
export function processesWith(marker) {
  const found = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8");
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      if (cmdline.includes(marker) && stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z") found.push(Number(name));
    } catch {}
  }
  return found;
}

/** Kills what is left of a smoke's own marked processes (after a failure). */
export function killMarked(marker) {
  for (const pid of processesWith(marker)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
}

/** Waits (bounded) for a started process to exit; returns its exit code or signal. */
export function exited(proc, timeoutMs = 30_000) {
  const { child } = proc;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode ?? child.signalCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${proc.name} did not exit within ${timeoutMs} ms; see ${proc.logPath}`)), timeoutMs);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal);
    });
  });
}
