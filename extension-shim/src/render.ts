// Rendering a sidecar View with Pi's UI. Only the small slices of Pi's API
// used here are named, so tests can pass a recording double.

import type { Block, Tone, View } from "./protocol.gen.ts";

export type NotifyType = "info" | "warning" | "error";

/** The part of `ctx.ui` a View needs. */
export interface ViewUi {
  notify(message: string, type?: NotifyType): void;
  setStatus(key: string, text: string | undefined): void;
}

/** The part of `pi` a View needs. */
export interface ViewMessages {
  sendMessage(
    message: { customType: string; content: string; display: boolean; details?: unknown },
    options?: { deliverAs?: "nextTurn" },
  ): void;
}

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
}

/** Blocks in order (one notification each), then the status line, then the message. */
export function renderView(view: View, ui: ViewUi, pi: ViewMessages, options: RenderOptions = {}): void {
  const { history = NO_HISTORY, idle = true } = options;
  const blocks: unknown[] = Array.isArray(view.blocks) ? view.blocks : [];
  for (const block of blocks) {
    const { text, tone } = renderBlock(block);
    ui.notify(text, tone);
  }
  if (view.status !== undefined && view.status !== null) {
    ui.setStatus(view.status.key, view.status.text ?? undefined);
  }
  const message = view.message;
  if (message !== undefined && message !== null) {
    const onceKey = message.once_key ?? undefined;
    if (onceKey !== undefined && history.hasMessage(message.custom_type, onceKey)) return;
    const details =
      onceKey === undefined ? message.details : { ...(message.details as Record<string, unknown> | null), once_key: onceKey };
    const sent = { customType: message.custom_type, content: message.content, display: true, details };
    if (idle) pi.sendMessage(sent);
    else pi.sendMessage(sent, { deliverAs: "nextTurn" });
    if (onceKey !== undefined) history.remember(message.custom_type, onceKey);
  }
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
