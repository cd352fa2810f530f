// The embark client of one Pi process: one lazily started sidecar, the
// handshake, and the `embark.command` call. A dead sidecar is replaced on the
// next command. Method names, the protocol version and each call's params and
// result types are generated from core's method table (protocol.gen.ts).

import { locateSidecar, packageInfo, type Located } from "./locate.ts";
import {
  METHOD,
  NOTIFICATION,
  PROTOCOL_VERSION,
  type HelloResult,
  type LiveUpdate,
  type MethodName,
  type MethodTypes,
  type PeerInfo,
  type SessionContext,
  type SessionStartParams,
  type View,
} from "./protocol.gen.ts";
import { RpcError, Sidecar, SidecarError } from "./sidecar.ts";

/** At most one immediate restart of a dead watched sidecar per this long. */
const REVIVE_INTERVAL_MS = 60_000;

/** Calls `method` with params and result typed as the protocol declares them. */
function invoke<M extends MethodName>(
  sidecar: Sidecar,
  method: M,
  params: MethodTypes[M]["params"],
): Promise<MethodTypes[M]["result"]> {
  return sidecar.call<MethodTypes[M]["result"]>(method, params);
}

export interface ClientOptions {
  /** How to find the binary; default: `locateSidecar()`. */
  locate?: () => Located;
  /** Extra arguments after the binary; default `["--stdio"]`. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
  callTimeoutMs?: number;
  client?: PeerInfo;
  /**
   * Called with one line when a sidecar that died on its own (not stopped by
   * this client) is replaced by a fresh one, so the user hears of it once.
   */
  onRestart?: (notice: string) => void;
}

/** The session whose live updates the client follows, and where they go. */
interface Watching {
  session: SessionContext;
  onUpdate: (update: LiveUpdate) => void;
  /** The running sidecar's subscription id, once it answered. */
  subscription?: number | undefined;
}

export class EmbarkClient {
  readonly #options: ClientOptions;
  #sidecar: Sidecar | undefined;
  #starting: Promise<Sidecar> | undefined;
  #hello: HelloResult | undefined;
  #watching: Watching | undefined;
  #stopped = false;
  #revivedAt = 0;

  constructor(options: ClientOptions = {}) {
    this.#options = options;
  }

  /** The handshake result of the running sidecar, if any. */
  get hello(): HelloResult | undefined {
    return this.#hello;
  }

  get sidecar(): Sidecar | undefined {
    return this.#sidecar;
  }

  /** Runs one `/embark` line (raw, untrimmed) in a Pi session. */
  async command(line: string, session: SessionContext): Promise<View> {
    const sidecar = await this.ensure(session.cwd);
    return invoke(sidecar, METHOD.command, { line, session });
  }

  /** A Pi session started: the sidecar adopts, imports and syncs its tasks. */
  async sessionStart(params: SessionStartParams): Promise<View> {
    const sidecar = await this.ensure(params.session.cwd);
    return invoke(sidecar, METHOD.session_start, params);
  }

  /**
   * Follows `session`'s live updates (`embark.watch`): each goes to `onUpdate`.
   * One session at a time: watching another ends the first. A sidecar that
   * dies while watching is replaced at once (with the restart notice) and the
   * watch resumes from its cursors.
   */
  async watch(session: SessionContext, onUpdate: (update: LiveUpdate) => void): Promise<void> {
    this.#stopped = false;
    const sidecar = await this.ensure(session.cwd);
    const previous = this.#watching;
    if (previous?.subscription !== undefined && this.#sidecar === sidecar) {
      // Its updates are dropped from here on; none follows the unwatch answer.
      this.#watching = undefined;
      await invoke(sidecar, METHOD.unwatch, { subscription: previous.subscription }).catch(() => undefined);
    }
    this.#watching = { session, onUpdate };
    await this.#subscribe(sidecar);
  }

  async #subscribe(sidecar: Sidecar): Promise<void> {
    const watching = this.#watching;
    if (watching === undefined) return;
    watching.subscription = undefined;
    const id = await invoke(sidecar, METHOD.watch, { session: watching.session });
    if (this.#watching === watching) watching.subscription = id;
  }

  #onNotification(method: string, params: unknown): void {
    if (method !== NOTIFICATION.watch) return;
    const p = params as { subscription?: unknown; result?: LiveUpdate } | null;
    const watching = this.#watching;
    if (watching === undefined || p?.result === undefined) return;
    // Updates can follow the watch answer in the same chunk, before its id is recorded: only
    // this subscription can be under way then (a replaced one was unwatched first).
    if (watching.subscription !== undefined && p.subscription !== watching.subscription) return;
    watching.onUpdate(p.result);
  }

  /** A watched sidecar that died on its own is replaced now, not at the next command (once per death). */
  #revive(dead: Sidecar, cwd: string): void {
    if (this.#stopped || this.#watching === undefined || this.#sidecar !== dead) return;
    // A sidecar that keeps dying is left to the next command, which reports why.
    if (Date.now() - this.#revivedAt < REVIVE_INTERVAL_MS) return;
    this.#revivedAt = Date.now();
    this.ensure(cwd).catch((err: unknown) => {
      console.error(`pi-embark: could not restart the sidecar for live updates: ${String(err)}`);
    });
  }

  /** Starts the sidecar (cwd = `cwd`) and shakes hands, unless one is running. */
  async ensure(cwd: string): Promise<Sidecar> {
    if (this.#sidecar?.usable === true) return this.#sidecar;
    // Concurrent commands share one start.
    this.#starting ??= this.#start(cwd).finally(() => {
      this.#starting = undefined;
    });
    return this.#starting;
  }

  /** Stops the sidecar, if one runs: EOF on stdin, SIGTERM after 500 ms. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#watching = undefined;
    const starting = this.#starting;
    if (starting !== undefined) await starting.catch(() => undefined);
    await this.#discard();
  }

  /** Forgets the current sidecar, if any, and stops it. */
  async #discard(): Promise<void> {
    const sidecar = this.#sidecar;
    this.#sidecar = undefined;
    this.#hello = undefined;
    if (sidecar !== undefined) await sidecar.stop();
  }

  async #start(cwd: string): Promise<Sidecar> {
    const dead = this.#sidecar;
    await this.#discard();
    if (dead !== undefined && dead.exitStatus !== undefined) {
      const { code, signal } = dead.exitStatus;
      const how = signal !== null ? `was killed by ${signal}` : `exited with code ${String(code)}`;
      this.#options.onRestart?.(`embark: the sidecar (pid ${String(dead.pid)}) ${how}; started a new one (task records it acknowledged are kept).`);
    }

    const located = (this.#options.locate ?? locateSidecar)();
    const { args, env, callTimeoutMs } = this.#options;
    const sidecar = new Sidecar({
      path: located.path,
      args,
      cwd,
      env,
      callTimeoutMs,
      onNotification: (method, params) => this.#onNotification(method, params),
    });
    let hello: HelloResult;
    try {
      hello = await invoke(sidecar, METHOD.hello, {
        protocol: PROTOCOL_VERSION,
        client: this.#options.client ?? clientInfo(),
      });
    } catch (err) {
      await sidecar.stop();
      if (err instanceof RpcError && err.kind === "unsupported_protocol") {
        throw new SidecarError(
          `embark-sidecar at ${located.path} does not speak protocol ${PROTOCOL_VERSION}: ${err.message}. ` +
            "Rebuild the sidecar from the same embark checkout as this extension.",
        );
      }
      throw err;
    }
    const supported = Array.isArray(hello.supported) ? hello.supported : [];
    if (!supported.includes(PROTOCOL_VERSION) || hello.protocol !== PROTOCOL_VERSION) {
      await sidecar.stop();
      throw new SidecarError(
        `embark-sidecar at ${located.path} speaks protocol versions [${supported.join(", ")}] ` +
          `(answered ${String(hello.protocol)}), but this extension needs protocol ${PROTOCOL_VERSION}. ` +
          "Rebuild the sidecar from the same embark checkout as this extension.",
      );
    }
    this.#sidecar = sidecar;
    this.#hello = hello;
    void sidecar.exited.then(() => this.#revive(sidecar, cwd));
    if (this.#watching !== undefined) await this.#subscribe(sidecar);
    return sidecar;
  }
}

function clientInfo(): PeerInfo {
  return { name: "pi-embark", version: packageInfo().version };
}
