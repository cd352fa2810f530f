// Rendering a sidecar View with Pi's UI. Only the small slices of Pi's API
// used here are named, so tests can pass a recording double.

import type { Block, ChatMessage, Tone, View } from "./protocol.gen.ts";

export type NotifyType = "info" | "warning" | "error";

/** The part of `ctx.ui` a View needs. */
export interface ViewUi {
  notify(message: string, type?: NotifyType): void;
  setStatus(key: string, text: string | undefined): void;
  /** Lines below the editor (`undefined` removes them); absent where a front end has none. */
  setWidget?(key: string, lines: string[] | undefined, options?: { placement?: "aboveEditor" | "belowEditor" }): void;
}

/** The part of `pi` a View needs. */
export interface ViewMessages {
  sendMessage(
    message: { customType: string; content: string; display: boolean; details?: unknown },
    options?: { deliverAs?: "nextTurn" },
  ): void;
  /** Records a custom session entry (not sent to the model); absent in tests that do not care. */
  appendEntry?(customType: string, data?: unknown): void;
}

export type PickBlock = Extract<Block, { type: "pick" }>;

/**
 * What the conversation holds, so a message with a `once_key` is added once:
 * Pi's session branch (where a delivered message is stored with its key in
 * `details.once_key`) plus the keys this process has sent, which covers a
 * message Pi has queued but not stored yet.
 */
export interface ViewHistory {
  hasMessage(customType: string, onceKey: string): boolean;
  remember(customType: string, onceKey: string): void;
}

/** History from the session's current branch and a per-process set of sent keys. */
export function sessionHistory(entries: readonly unknown[], sent: Set<string> = new Set()): ViewHistory {
  const id = (customType: string, onceKey: string): string => JSON.stringify([customType, onceKey]);
  return {
    hasMessage: (customType, onceKey) =>
      sent.has(id(customType, onceKey)) ||
      entries.some((entry) => {
        const e = entry as { type?: unknown; customType?: unknown; details?: { once_key?: unknown } | null };
        return e.type === "custom_message" && e.customType === customType && e.details?.once_key === onceKey;
      }),
    remember: (customType, onceKey) => void sent.add(id(customType, onceKey)),
  };
}

const NO_HISTORY: ViewHistory = { hasMessage: () => false, remember: () => {} };

export interface RenderOptions {
  history?: ViewHistory;
  /** False while Pi's agent is working: the message then waits for the next turn instead of steering this one. */
  idle?: boolean;
  /**
   * True where a picker can be shown (the TUI): a pick block is then returned
   * for the caller to show with `ctx.ui.select`; otherwise it is rendered as a numbered board.
   */
  interactive?: boolean;
}

/**
 * The session entries and the messages first, then every text and table
 * block as ONE notification, toned by the most severe block, then the status
 * line and the widget. One notification because the TUI folds back-to-back
 * notifications into one line (a second replaces the first); messages first
 * because a message in the chat ends that fold, so a live update's notice
 * (a task ended in the background) can never replace the answer the user's
 * last command showed. Answers the pick block, if any, when `interactive`
 * (the caller shows the picker).
 */
export function renderView(view: View, ui: ViewUi, pi: ViewMessages, options: RenderOptions = {}): PickBlock | undefined {
  const { history = NO_HISTORY, idle = true, interactive = false } = options;
  const blocks: unknown[] = Array.isArray(view.blocks) ? view.blocks : [];
  let pick: PickBlock | undefined;
  const texts: string[] = [];
  let tone: NotifyType = "info";
  for (const block of blocks) {
    if (interactive && isPick(block) && pick === undefined) {
      pick = block;
      continue;
    }
    const rendered = renderBlock(block);
    texts.push(rendered.text);
    tone = worse(tone, rendered.tone);
  }
  for (const entry of Array.isArray(view.entries) ? view.entries : []) {
    pi.appendEntry?.(entry.custom_type, entry.data);
  }
  const messages = [view.message, ...(Array.isArray(view.messages) ? view.messages : [])];
  for (const message of messages) {
    if (message !== undefined && message !== null) sendOnce(message, pi, history, idle);
  }
  if (texts.length > 0) ui.notify(texts.join("\n\n"), tone);
  if (view.status !== undefined && view.status !== null) {
    ui.setStatus(view.status.key, view.status.text ?? undefined);
  }
  if (view.widget !== undefined && view.widget !== null) {
    ui.setWidget?.(view.widget.key, view.widget.lines ?? undefined, { placement: "belowEditor" });
  }
  return pick;
}

function sendOnce(message: ChatMessage, pi: ViewMessages, history: ViewHistory, idle: boolean): void {
  const onceKey = message.once_key ?? undefined;
  if (onceKey !== undefined && history.hasMessage(message.custom_type, onceKey)) return;
  const details =
    onceKey === undefined ? message.details : { ...(message.details as Record<string, unknown> | null), once_key: onceKey };
  const sent = { customType: message.custom_type, content: message.content, display: true, details };
  if (idle) pi.sendMessage(sent);
  else pi.sendMessage(sent, { deliverAs: "nextTurn" });
  if (onceKey !== undefined) history.remember(message.custom_type, onceKey);
}

function isPick(block: unknown): block is PickBlock {
  const b = block as { type?: unknown; items?: unknown };
  return b.type === "pick" && Array.isArray(b.items);
}

const SEVERITY: Record<NotifyType, number> = { info: 0, warning: 1, error: 2 };

function worse(a: NotifyType, b: NotifyType): NotifyType {
  return SEVERITY[b] > SEVERITY[a] ? b : a;
}

/** A pick list as a numbered board: title, one line per item, the hint. */
export function formatBoard(pick: PickBlock): string {
  const lines = [pick.title];
  pick.items.forEach((item, i) => lines.push(`${String(i + 1).padStart(3)}. ${item.label}`));
  if (pick.hint !== "") lines.push(pick.hint);
  return lines.join("\n");
}

/** One block as notification text and tone. Unknown block types (added later) degrade to a note. */
export function renderBlock(block: unknown): { text: string; tone: NotifyType } {
  const b = block as Block | { type?: unknown };
  if (b.type === "text") {
    const t = b as Extract<Block, { type: "text" }>;
    return { text: t.text, tone: toNotifyType(t.tone) };
  }
  if (b.type === "table") {
    return { text: formatTable(b as Extract<Block, { type: "table" }>), tone: "info" };
  }
  if (isPick(block)) {
    return { text: formatBoard(block), tone: "info" };
  }
  const text = (block as { text?: unknown }).text;
  return {
    text: typeof text === "string" ? text : `(this version of pi-embark cannot show a "${String(b.type)}" block)`,
    tone: "info",
  };
}

export function toNotifyType(tone: Tone | string | undefined): NotifyType {
  return tone === "warning" || tone === "error" ? tone : "info";
}

/**
 * A table as aligned plain-text lines: title, header, a rule, rows. Columns
 * are padded to the widest cell (counted in code points); line ends are
 * trimmed; newlines inside cells become spaces so rows stay one line.
 */
export function formatTable(table: { title?: string | null; columns: string[]; rows: string[][] }): string {
  const clean = (cell: unknown): string => String(cell ?? "").replace(/\r?\n|\r/g, " ");
  const header = table.columns.map(clean);
  const rows = table.rows.map((row) => row.map(clean));
  const count = Math.max(header.length, ...rows.map((r) => r.length));
  const widths = Array.from({ length: count }, (_, i) =>
    Math.max(width(header[i] ?? ""), ...rows.map((r) => width(r[i] ?? ""))),
  );
  const line = (cells: string[]): string =>
    widths
      .map((w, i) => pad(cells[i] ?? "", w))
      .join("  ")
      .trimEnd();

  const out: string[] = [];
  if (table.title !== undefined && table.title !== null && table.title !== "") out.push(table.title);
  if (count > 0) {
    out.push(line(header));
    out.push(widths.map((w) => "-".repeat(Math.max(w, 1))).join("  "));
  }
  for (const row of rows) out.push(line(row));
  if (rows.length === 0) out.push("(none)");
  return out.join("\n");
}

function width(text: string): number {
  return [...text].length;
}

function pad(text: string, to: number): string {
  return text + " ".repeat(Math.max(0, to - width(text)));
}

/** The text to notify for any failure of a command. */
export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message;
  return `embark failed: ${String(err)}`;
}
