// generated — do not edit; npm run gen:types
// Source: schemas/v1/sidecar-protocol.json and sidecar.openrpc.json (generated from core/src/protocol.rs).
/* eslint-disable */

/**
 * embark-sidecar JSON-RPC 2.0 over NDJSON stdio, protocol 1. Methods: embark.hello (HelloParams -> HelloResult), embark.command (CommandParams -> View), embark.session_start (SessionStartParams -> View), embark.watch (WatchParams -> SubscriptionId), embark.unwatch (UnwatchParams -> Unwatched). Errors: error.code from ErrorCode, error.data is ErrorData.
 */
export type EmbarkSidecarProtocolV1 =
  | CommandParams
  | ErrorCode
  | ErrorData
  | HelloParams
  | HelloResult
  | LiveUpdate
  | SessionStartParams
  | SubscriptionId
  | UnwatchParams
  | Unwatched
  | View1
  | WatchParams;
/**
 * Stable JSON-RPC error codes. The JSON-RPC 2.0 ones keep their meaning;
 * embark's own are positive.
 */
export type ErrorCode =
  | "parse_error"
  | "invalid_request"
  | "method_not_found"
  | "invalid_params"
  | "internal"
  | "unsupported_protocol"
  | "handshake_required"
  | "usage"
  | "repository"
  | "config"
  | "broker_unreachable"
  | "broker_rejected"
  | "task_not_found"
  | "timeout";
export type Block =
  | {
      text: string;
      tone: Tone;
      type: "text";
    }
  | {
      columns: string[];
      rows: string[][];
      title?: string | null;
      type: "table";
    }
  | {
      /**
       * Shown under the board where no picker can be shown.
       */
      hint: string;
      items: PickItem[];
      title: string;
      type: "pick";
    };
export type Tone = "info" | "warning" | "error";
/**
 * A subscription's id, as `embark.watch` answers it and each notification names it.
 */
export type SubscriptionId = number;

export interface CommandParams {
  /**
   * The raw argument text after `/embark ` (not trimmed), e.g. `"status latest"`.
   */
  line: string;
  session: SessionContext;
}
/**
 * The Pi session the command runs in.
 */
export interface SessionContext {
  /**
   * Pi's working directory (`ctx.cwd`): the repository tasks are cut from.
   */
  cwd: string;
  /**
   * Pi's session file (`ctx.sessionManager.getSessionFile()`), which may not exist yet:
   * a session whose file never came into being cannot be reopened, so its tasks are
   * adopted by the next session in the same directory.
   */
  session_file?: string | null;
  /**
   * Pi's session id (`ctx.sessionManager.getSessionId()`).
   */
  session_id: string;
}
/**
 * The `error.data` of every embark JSON-RPC error: the code's name, so a
 * client need not keep a table of numbers.
 */
export interface ErrorData {
  kind: ErrorCode;
}
export interface HelloParams {
  /**
   * Who is asking, for logs.
   */
  client?: PeerInfo | null;
  /**
   * The protocol version the client wants.
   */
  protocol: number;
}
export interface PeerInfo {
  name: string;
  version: string;
}
export interface HelloResult {
  /**
   * Optional features, named; clients ignore names they do not know.
   */
  capabilities: string[];
  /**
   * The version this session will speak (equal to the one asked for).
   */
  protocol: number;
  server: PeerInfo;
  /**
   * Every version the sidecar speaks.
   */
  supported: number[];
}
/**
 * One live update (the `result` of an `embark.live` notification): what changed
 * for one task, as a view to render like a command's answer.
 */
export interface LiveUpdate {
  /**
   * The newest event seq of the task this update reflects.
   */
  seq: number;
  /**
   * The task's state as of this update.
   */
  state: "queued" | "running" | "stale" | "succeeded" | "failed" | "cancelled";
  /**
   * The task it is about.
   */
  task_id: string;
  view: View;
}
/**
 * What to render: the footer status, the widget, a line when the task ended, its result (once).
 */
export interface View {
  /**
   * Shown in order, together as one notification (a TUI shows one at a time).
   */
  blocks: Block[];
  /**
   * Entries to record in Pi's session (`pi.appendEntry`), mirroring the sidecar's task records.
   */
  entries?: SessionEntry[];
  /**
   * A message to add to the conversation.
   */
  message?: ChatMessage | null;
  /**
   * More messages, after `message` (several results landing at once).
   */
  messages?: ChatMessage[];
  /**
   * A footer status line to set (`text: null` clears it).
   */
  status?: StatusLine | null;
  /**
   * A widget below the editor to set (`lines: null` removes it); absent: leave it.
   */
  widget?: Widget | null;
}
/**
 * One choice of a pick list: what it shows and the `/embark` line it runs.
 */
export interface PickItem {
  /**
   * The argument line to run when chosen, e.g. `status 3f9c2a71`.
   */
  command: string;
  label: string;
}
/**
 * A custom entry for Pi's session file; not sent to the model.
 */
export interface SessionEntry {
  custom_type: string;
  data: unknown;
}
export interface ChatMessage {
  /**
   * Markdown text.
   */
  content: string;
  /**
   * Pi's `customType` for the message.
   */
  custom_type: string;
  /**
   * Structured data for renderers (e.g. the task id and state).
   */
  details: unknown;
  /**
   * When set, add the message only if the conversation (its current
   * branch) holds no message of this `custom_type` whose
   * `details.once_key` equals it; front ends store the key in
   * `details.once_key`. Used so a task's result lands once however often
   * `status` is asked.
   */
  once_key?: string | null;
}
export interface StatusLine {
  key: string;
  text?: string | null;
}
/**
 * A few lines below the editor (Pi's `ctx.ui.setWidget(key, lines)`).
 */
export interface Widget {
  key: string;
  /**
   * The lines to show; `null` removes the widget.
   */
  lines?: string[] | null;
}
export interface SessionStartParams {
  /**
   * The task ids the session's own entries (`embark-task`) name, so a session whose
   * sidecar store was lost still finds its tasks.
   */
  known_tasks?: string[];
  /**
   * Why Pi started the session: `startup`, `reload`, `new`, `resume` or `fork` (for logs).
   */
  reason?: string | null;
  session: SessionContext;
}
export interface UnwatchParams {
  /**
   * The id `embark.watch` answered.
   */
  subscription: number;
}
export interface Unwatched {
  /**
   * Whether a subscription ended (false: there was none with that id).
   */
  stopped: boolean;
}
/**
 * What to show for a command.
 */
export interface View1 {
  /**
   * Shown in order, together as one notification (a TUI shows one at a time).
   */
  blocks: Block[];
  /**
   * Entries to record in Pi's session (`pi.appendEntry`), mirroring the sidecar's task records.
   */
  entries?: SessionEntry[];
  /**
   * A message to add to the conversation.
   */
  message?: ChatMessage | null;
  /**
   * More messages, after `message` (several results landing at once).
   */
  messages?: ChatMessage[];
  /**
   * A footer status line to set (`text: null` clears it).
   */
  status?: StatusLine | null;
  /**
   * A widget below the editor to set (`lines: null` removes it); absent: leave it.
   */
  widget?: Widget | null;
}
export interface WatchParams {
  session: SessionContext1;
}
/**
 * The Pi session the command runs in.
 */
export interface SessionContext1 {
  /**
   * Pi's working directory (`ctx.cwd`): the repository tasks are cut from.
   */
  cwd: string;
  /**
   * Pi's session file (`ctx.sessionManager.getSessionFile()`), which may not exist yet:
   * a session whose file never came into being cannot be reopened, so its tasks are
   * adopted by the next session in the same directory.
   */
  session_file?: string | null;
  /**
   * Pi's session id (`ctx.sessionManager.getSessionId()`).
   */
  session_id: string;
}

// From schemas/v1/sidecar.openrpc.json.

/** The protocol version these types describe: the one this shim asks for in `embark.hello`. */
export const PROTOCOL_VERSION = 1;
/** Every protocol version a sidecar built from the same commit speaks. */
export const SUPPORTED_PROTOCOLS: readonly number[] = [1];

/** The method names. */
export const METHOD = {
  /** The handshake: must come first. */
  hello: "embark.hello",
  /** One `/embark …` line in a Pi session. */
  command: "embark.command",
  /** A Pi session started (startup, `pi -c`, `/resume`, `/new`, a fork). */
  session_start: "embark.session_start",
  /** Subscribe to a Pi session's live updates. */
  watch: "embark.watch",
  /** End a live-update subscription. */
  unwatch: "embark.unwatch",
} as const;
export type MethodName = (typeof METHOD)[keyof typeof METHOD];

/** The notifications of each subscription, by the subscribing method's key. */
export const NOTIFICATION = {
  /** What embark.watch sends, each a {@link LiveUpdate}. */
  watch: "embark.live",
} as const;

/** What each method takes and answers. */
export interface MethodTypes {
  "embark.hello": { params: HelloParams; result: HelloResult };
  "embark.command": { params: CommandParams; result: View };
  "embark.session_start": { params: SessionStartParams; result: View };
  "embark.watch": { params: WatchParams; result: SubscriptionId };
  "embark.unwatch": { params: UnwatchParams; result: Unwatched };
}

/** Each error's `error.code`, by its name (`error.data.kind`). */
export const ERROR_CODES = {
  broker_rejected: 1021,
  broker_unreachable: 1020,
  config: 1012,
  handshake_required: 1002,
  internal: -32603,
  invalid_params: -32602,
  invalid_request: -32600,
  method_not_found: -32601,
  parse_error: -32700,
  repository: 1011,
  task_not_found: 1022,
  timeout: 1030,
  unsupported_protocol: 1001,
  usage: 1010,
} as const satisfies Record<ErrorCode, number>;

/** The errors about a line itself (not JSON, not a request, no such method): any line can get them. */
export const LINE_ERRORS = ["invalid_request", "method_not_found", "parse_error"] as const satisfies readonly ErrorCode[];

/** The errors each method can answer with, besides the {@link LINE_ERRORS}. */
export const METHOD_ERRORS = {
  "embark.hello": [
    "invalid_params",
    "internal",
    "unsupported_protocol",
  ],
  "embark.command": [
    "invalid_params",
    "internal",
    "handshake_required",
    "usage",
    "repository",
    "config",
    "broker_unreachable",
    "broker_rejected",
    "task_not_found",
    "timeout",
  ],
  "embark.session_start": [
    "invalid_params",
    "internal",
    "handshake_required",
    "config",
    "broker_unreachable",
    "broker_rejected",
    "timeout",
  ],
  "embark.watch": [
    "invalid_params",
    "internal",
    "handshake_required",
    "config",
  ],
  "embark.unwatch": [
    "invalid_params",
    "internal",
    "handshake_required",
  ],
} as const satisfies Record<MethodName, readonly ErrorCode[]>;
