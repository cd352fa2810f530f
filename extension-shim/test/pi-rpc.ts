// A minimal client for real `pi --mode rpc`, isolated in a temp agent dir.

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { LineSplitter } from "../src/ndjson.ts";
import { StderrTail } from "../src/stderr-tail.ts";
import { piBin } from "./support.ts";

export type Json = Record<string, unknown>;

export function isolatedDirs(): { agentDir: string; cwd: string } {
  const root = mkdtempSync(join(tmpdir(), "embark-pi-"));
  return { agentDir: join(root, "agent"), cwd: mkdtempSync(join(root, "proj-")) };
}

/**
 * Pi's environment: this one plus an isolated agent dir, and an empty embark
 * config file beside it so the sidecar Pi starts never reads the developer's
 * (a named config file must exist, so it is written here).
 */
export function piEnv(agentDir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  mkdirSync(dirname(agentDir), { recursive: true });
  const embarkConfig = join(dirname(agentDir), "embark-config.toml");
  writeFileSync(embarkConfig, "");
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PI_CODING_AGENT_DIR: agentDir,
    PI_OFFLINE: "1",
    EMBARK_CONFIG: embarkConfig,
    ...extra,
  };
  for (const [k, v] of Object.entries(extra)) if (v === undefined) delete env[k];
  return env;
}

export class PiRpc {
  readonly child: ChildProcessWithoutNullStreams;
  readonly messages: Json[] = [];
  readonly stderr = new StderrTail(32 * 1024);
  readonly #waiters = new Set<() => void>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }) {
    this.child = spawn(piBin, ["--mode", "rpc", ...args], { cwd: options.cwd, env: options.env, stdio: "pipe" });
    const splitter = new LineSplitter();
    this.child.stdout.on("data", (chunk: Buffer) => {
      for (const line of splitter.push(chunk)) {
        if (line.trim() === "") continue;
        this.messages.push(JSON.parse(line) as Json);
      }
      for (const wake of this.#waiters) wake();
    });
    this.child.stderr.on("data", (chunk: Buffer) => this.stderr.push(chunk));
    this.exited = new Promise((resolve) => {
      this.child.on("close", (code, signal) => {
        for (const wake of this.#waiters) wake();
        resolve({ code, signal });
      });
    });
  }

  send(command: Json): void {
    this.child.stdin.write(`${JSON.stringify(command)}\n`);
  }

  /** The first message (from the start) matching `pred`, waiting up to `ms`. */
  async waitFor(what: string, pred: (m: Json) => boolean, ms = 20_000): Promise<Json> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.messages.find(pred);
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0 || this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(
          `pi: no ${what} within ${ms} ms (exit ${String(this.child.exitCode)}).\n` +
            `stdout messages:\n${this.messages.map((m) => JSON.stringify(m)).join("\n")}\n` +
            `stderr tail:\n${this.stderr.lastLines(30).join("\n")}`,
        );
      }
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.#waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(left, 500));
        this.#waiters.add(wake);
      });
    }
  }

  response(id: string, ms?: number): Promise<Json> {
    return this.waitFor(`response ${id}`, (m) => m.type === "response" && m.id === id, ms);
  }

  /** Closes stdin (pi quits, firing session_shutdown); SIGTERM if it lingers. */
  async close(ms = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill("SIGTERM"), ms);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Children of `pid` (Linux /proc), to see which sidecars a pi started. */
export async function childPids(pid: number): Promise<{ pid: number; comm: string }[]> {
  const { readdirSync, readFileSync } = await import("node:fs");
  const out: { pid: number; comm: string }[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid ...; comm may contain spaces, so split after the last ")".
      const close = stat.lastIndexOf(")");
      const comm = stat.slice(stat.indexOf("(") + 1, close);
      const ppid = Number(stat.slice(close + 2).split(" ")[1]);
      if (ppid === pid) out.push({ pid: Number(entry), comm });
    } catch {
      // the process went away while we looked
    }
  }
  return out;
}

/** True while `pid` runs (a zombie counts as gone). */
export async function alive(pid: number): Promise<boolean> {
  const { readFileSync } = await import("node:fs");
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}
