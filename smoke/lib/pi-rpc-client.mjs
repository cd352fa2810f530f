// Drives `pi --mode rpc` as a laptop-side front end would: one JSON command
// per line on stdin, responses matched by id, events and UI requests kept.

import { start } from "./process.mjs";

export class PiRpc {
  constructor(proc) {
    this.proc = proc;
    this.nextId = 1;
  }

  static start({ cwd, env, args, logPath, piBin }) {
    return new PiRpc(start("pi", piBin, ["--mode", "rpc", ...args], { cwd, env, logPath }));
  }

  /** Sends a command and returns { response, seen }: every line that arrived before its response. */
  async call(command, timeoutMs = 60_000) {
    const id = `c${this.nextId++}`;
    this.proc.child.stdin.write(JSON.stringify({ id, ...command }) + "\n");
    const seen = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no response to ${JSON.stringify(command)} within ${timeoutMs} ms; see ${this.proc.logPath}`);
      const line = await this.proc.lines(left);
      if (line === null) throw new Error(`pi exited while waiting for ${command.type}; see ${this.proc.logPath}`);
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        throw new Error(`pi wrote a non-JSON line on stdout: ${line}`);
      }
      if (msg.type === "response" && msg.id === id) return { response: msg, seen };
      seen.push(msg);
    }
  }

  /**
   * Reads what Pi sends unasked (live updates) until `done(seen)` holds;
   * answers every line read. Fails after `timeoutMs`.
   */
  async waitFor(what, done, timeoutMs = 60_000) {
    const seen = [];
    const deadline = Date.now() + timeoutMs;
    while (!done(seen)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what} did not happen within ${timeoutMs} ms; saw ${JSON.stringify(seen).slice(0, 3000)}`);
      const line = await this.proc.lines(left);
      if (line === null) throw new Error(`pi exited while waiting for ${what}; see ${this.proc.logPath}`);
      seen.push(JSON.parse(line));
    }
    return seen;
  }

  /** Runs `/embark <args>` and returns what the extension showed: notifications, custom messages, status. */
  async embark(args) {
    const { response, seen } = await this.call({ type: "prompt", message: `/embark ${args}` });
    if (!response.success) throw new Error(`/embark ${args} was refused: ${response.error}`);
    const errors = seen.filter((m) => m.type === "extension_error");
    if (errors.length) throw new Error(`the extension failed: ${JSON.stringify(errors)}`);
    return {
      notes: seen.filter((m) => m.type === "extension_ui_request" && m.method === "notify"),
      messages: seen.filter((m) => m.type === "message_end" && m.message?.role === "custom").map((m) => m.message),
      statuses: seen.filter((m) => m.type === "extension_ui_request" && m.method === "setStatus"),
      widgets: seen.filter((m) => m.type === "extension_ui_request" && m.method === "setWidget"),
      seen,
    };
  }
}

/** The task id prefix a submit named ("Embarked task 1a2b3c4d …"). */
export function submittedTaskId(view) {
  return view.notes.map((n) => n.message).join("\n").match(/task ([0-9a-f]{8,})/)?.[1];
}

/** The `state` row of a status view's table (its first notification). */
export function taskState(view) {
  return (view.notes[0]?.message ?? "").match(/^state\s+(\S+)\s*$/m)?.[1];
}

export const FINISHED_STATES = ["succeeded", "failed", "cancelled"];

/**
 * Asks `/embark status <id>` once a second until the task is finished or
 * `timeoutMs` passed; returns the last status view and its state.
 */
export async function pollStatus(pi, id, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await pi.embark(`status ${id}`);
    const state = taskState(status);
    if (FINISHED_STATES.includes(state) || Date.now() > deadline) return { status, state };
    await new Promise((r) => setTimeout(r, 1000));
  }
}
