// One embark-sidecar child process and a JSON-RPC 2.0 client over its stdio.
//
// stdio is always piped, never inherited: in `pi --mode rpc` a child writing
// to fd 1 would corrupt Pi's own protocol stream. stdout carries protocol
// only; stderr is kept in a bounded tail for error messages.

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { encodeLine, LineSplitter } from "./ndjson.ts";
import { ERROR_CODES, type ErrorCode } from "./protocol.gen.ts";
import { StderrTail } from "./stderr-tail.ts";

export const DEFAULT_CALL_TIMEOUT_MS = 60_000;
/** How long `stop()` waits after closing stdin before sending SIGTERM. */
export const STOP_GRACE_MS = 500;

/** The sidecar answered with a JSON-RPC error. */
export class RpcError extends Error {
  readonly code: number;
  /** `error.data.kind`, else the name of a known `code`. */
  readonly kind: ErrorCode | undefined;
  readonly data: unknown;
  /** The method that failed. */
  readonly method: string;
  constructor(method: string, code: number, message: string, data: unknown) {
    super(message);
    this.name = "RpcError";
    this.code = code;
    this.data = data;
    this.kind = isObject(data) && typeof data.kind === "string" ? (data.kind as ErrorCode) : errorKind(code);
    this.method = method;
  }
}

/** The call did not get an answer: the process died, timed out or broke the protocol. */
export class SidecarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SidecarError";
  }
}

export interface SidecarOptions {
  path: string;
  /** Default `["--stdio"]`. */
  args?: string[] | undefined;
  cwd: string;
  /** Default: this process's environment. */
  env?: NodeJS.ProcessEnv | undefined;
  /** Default {@link DEFAULT_CALL_TIMEOUT_MS}. */
  callTimeoutMs?: number | undefined;
  /** Called with each notification the sidecar sends (a subscription's updates). */
  onNotification?: ((method: string, params: unknown) => void) | undefined;
}

interface Pending {
  method: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class Sidecar {
  readonly path: string;
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #pending = new Map<number, Pending>();
  readonly #stderr = new StderrTail();
  readonly #callTimeoutMs: number;
  readonly #onNotification: ((method: string, params: unknown) => void) | undefined;
  #nextId = 1;
  /** Set once the process is gone or unusable; every later call fails with it. */
  #failure: string | undefined;
  #exited = false;
  #exitStatus: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly #exitPromise: Promise<void>;

  constructor(options: SidecarOptions) {
    this.path = options.path;
    this.#callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#onNotification = options.onNotification;
    this.#child = spawn(options.path, options.args ?? ["--stdio"], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
      windowsHide: true,
    });

    let resolveExit: () => void = () => {};
    this.#exitPromise = new Promise((r) => {
      resolveExit = r;
    });

    const splitter = new LineSplitter({
      onTooLong: (limit) => this.#fail(`it wrote a line longer than ${limit} bytes to stdout`, true),
    });
    this.#child.stdout.on("data", (chunk: Buffer) => {
      for (const line of splitter.push(chunk)) this.#onLine(line);
    });
    this.#child.stdout.on("end", () => {
      const last = splitter.end();
      if (last !== undefined) this.#onLine(last);
    });
    this.#child.stderr.on("data", (chunk: Buffer) => this.#stderr.push(chunk));
    // Writes after the child died raise EPIPE here; without a listener that
    // would be an uncaught exception inside Pi. The "close" handler reports the exit.
    this.#child.stdin.on("error", () => {});

    this.#child.on("error", (err: NodeJS.ErrnoException) => {
      // Spawn failures (ENOENT, EACCES) arrive here, not as an exception; a
      // process that started has a pid, and its end is reported by "close".
      if (this.#child.pid !== undefined) return;
      this.#exited = true;
      this.#fail(`it could not be started: ${err.message}`, false);
      resolveExit();
    });
    this.#child.on("exit", () => {
      this.#exited = true;
    });
    // "close" comes after stdout and stderr are drained, so replies written
    // just before exiting are delivered first and the stderr tail is complete.
    this.#child.on("close", (code, signal) => {
      this.#exited = true;
      this.#exitStatus = { code, signal };
      const how = signal !== null ? `was killed by ${signal}` : `exited with code ${String(code)}`;
      this.#fail(how, false);
      resolveExit();
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** False once the process exited or broke the protocol. */
  get usable(): boolean {
    return this.#failure === undefined && !this.#exited;
  }

  /** How the process ended, once it has. */
  get exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.#exitStatus;
  }

  /** Resolves once the process is gone. */
  get exited(): Promise<void> {
    return this.#exitPromise;
  }

  call<T>(method: string, params: unknown, timeoutMs = this.#callTimeoutMs): Promise<T> {
    if (this.#failure !== undefined) {
      return Promise.reject(new SidecarError(this.#describeFailure(method, this.#failure)));
    }
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new SidecarError(
            `embark-sidecar (${this.path}) did not answer ${method} within ${formatMs(timeoutMs)}.${this.#stderrSuffix()}`,
          ),
        );
      }, timeoutMs);
      timer.unref();
      this.#pending.set(id, { method, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#child.stdin.write(encodeLine({ jsonrpc: "2.0", id, method, params }));
    });
  }

  /**
   * Closes stdin (the sidecar exits on EOF), sends SIGTERM if it is still
   * alive after `graceMs`, and resolves when it is gone (or after a bound).
   */
  async stop(graceMs = STOP_GRACE_MS): Promise<void> {
    if (this.#failure === undefined) this.#failure = "was stopped";
    this.#child.stdin.end();
    if (this.#exited) return;
    const gone = await raceTimeout(this.#exitPromise, graceMs);
    if (gone || this.#exited) return;
    this.#child.kill("SIGTERM");
    const goneAfterTerm = await raceTimeout(this.#exitPromise, 2_000);
    if (!goneAfterTerm && !this.#exited) this.#child.kill("SIGKILL");
  }

  #onLine(line: string): void {
    if (line.trim() === "") return;
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch {
      this.#fail(`it wrote a line to stdout that is not JSON: ${JSON.stringify(clip(line, 200))}`, true);
      return;
    }
    if (!isObject(message)) {
      this.#fail(`it wrote a JSON value that is not an object: ${clip(line, 200)}`, true);
      return;
    }
    if (!("id" in message) || message.id === null) {
      // A notification: a subscription's update (embark.live).
      if (typeof message.method === "string") {
        this.#onNotification?.(message.method, message.params);
        return;
      }
      // An error without id answers a request the sidecar could not parse.
      // Ours are always well-formed, so this is a protocol fault.
      const err = isObject(message.error) ? message.error : {};
      this.#fail(`it reported an error without a request id: ${String(err.message ?? clip(line, 200))}`, true);
      return;
    }
    const id = message.id;
    const pending = typeof id === "number" ? this.#pending.get(id) : undefined;
    if (pending === undefined) return; // a reply to a call that already timed out
    this.#pending.delete(id as number);
    clearTimeout(pending.timer);
    if (isObject(message.error)) {
      const e = message.error;
      pending.reject(
        new RpcError(
          pending.method,
          typeof e.code === "number" ? e.code : 0,
          typeof e.message === "string" ? e.message : "embark-sidecar returned an error without a message",
          e.data,
        ),
      );
    } else if ("result" in message) {
      pending.resolve(message.result);
    } else {
      pending.reject(new SidecarError(`embark-sidecar sent a reply to ${pending.method} with neither result nor error`));
    }
  }

  /** Marks the process unusable and fails every pending call with `what`. */
  #fail(what: string, kill: boolean): void {
    this.#failure ??= what;
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(new SidecarError(this.#describeFailure(pending.method, what)));
    }
    if (kill && !this.#exited) {
      this.#child.stdin.end();
      this.#child.kill("SIGTERM");
    }
  }

  #describeFailure(method: string, what: string): string {
    return `embark-sidecar (${this.path}, pid ${String(this.#child.pid ?? "none")}) ${what} before answering ${method}.${this.#stderrSuffix()}`;
  }

  #stderrSuffix(): string {
    const lines = this.#stderr.lastLines(20);
    return lines.length === 0 ? "" : `\nLast lines of its stderr:\n${lines.join("\n")}`;
  }
}

/** The name of an embark error number, if it is one. */
export function errorKind(code: number): ErrorCode | undefined {
  const names = Object.keys(ERROR_CODES) as ErrorCode[];
  return names.find((name) => ERROR_CODES[name] === code);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function formatMs(ms: number): string {
  return ms >= 1000 && ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

async function raceTimeout(promise: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((r) => {
    timer = setTimeout(() => r(false), ms);
    timer.unref();
  });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
