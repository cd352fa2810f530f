// pi-embark: the `/embark` command. A pipe and a renderer: every decision is
// made by embark-sidecar (a Rust binary spoken to over NDJSON JSON-RPC), so
// the sidecar's own tests reach all of the logic.

import type { ExtensionAPI, ExtensionContext } from "@mariozechner/pi-coding-agent";
import { EmbarkClient } from "./client.ts";
import { RpcError } from "./sidecar.ts";
import type { LiveUpdate, SessionContext, View } from "./protocol.gen.ts";
import { errorText, renderView, sessionHistory, type PickBlock } from "./render.ts";

/** The `customType` of the session entries that mirror the sidecar's task records. */
export const TASK_ENTRY = "embark-task";

export default function embark(pi: ExtensionAPI): void {
  // Keys of once-only messages this process sent (Pi may still hold them in a queue).
  const sentOnce = new Set<string>();
  // The notice is shown through whichever context is current when a dead sidecar is replaced.
  let notify: ((text: string) => void) | undefined;
  // One sidecar per Pi process, started by the first /embark or session start.
  const client = new EmbarkClient({ onRestart: (notice) => notify?.(notice) });
  // Live updates render through the context of the newest command or session start.
  let current: ExtensionContext | undefined;
  let watched: string | undefined;
  // (task, seq, state) of every update shown: a repeat after a reconnect or a restart is dropped.
  const shown = new Set<string>();

  const onUpdate = (update: LiveUpdate): void => {
    const key = `${update.task_id}:${String(update.seq)}:${update.state}`;
    const ctx = current;
    if (shown.has(key) || ctx === undefined) return;
    shown.add(key);
    try {
      void render(update.view, ctx).catch((err: unknown) => console.error(`pi-embark: live update: ${errorText(err)}`));
    } catch (err) {
      // A context of a session Pi replaced throws; the next session start brings a new one.
      console.error(`pi-embark: live update: ${errorText(err)}`);
    }
  };

  /** Follows the session's live updates, once per session id. */
  const watch = async (ctx: ExtensionContext): Promise<void> => {
    current = ctx;
    const id = ctx.sessionManager.getSessionId();
    if (watched === id) return;
    watched = id;
    try {
      await client.watch(session(ctx), onUpdate);
    } catch (err) {
      watched = undefined;
      // Not configured yet: the first /embark says what to set; no line at every start of Pi.
      if (!(err instanceof RpcError && err.kind === "config")) console.error(`pi-embark: live updates: ${errorText(err)}`);
    }
  };

  const render = async (view: View, ctx: ExtensionContext): Promise<PickBlock | undefined> =>
    renderView(view, ctx.ui, pi, {
      history: sessionHistory(ctx.sessionManager.getBranch(), sentOnce),
      idle: ctx.isIdle(),
      interactive: interactive(ctx),
    });

  const run = async (line: string, ctx: ExtensionContext): Promise<void> => {
    notify = (text) => ctx.ui.notify(text, "warning");
    current = ctx;
    try {
      const pick = await render(await client.command(line, session(ctx)), ctx);
      await watch(ctx);
      if (pick === undefined) return;
      const labels = pick.items.map((item) => item.label);
      const chosen = await ctx.ui.select(pick.title, labels);
      const item = pick.items[labels.indexOf(chosen ?? "")];
      if (item !== undefined) await run(item.command, ctx);
    } catch (err) {
      ctx.ui.notify(errorText(err), "error");
    }
  };

  pi.registerCommand("embark", {
    description: "Hand a task to a remote runner (try /embark help)",
    handler: async (args, ctx) => run(args, ctx),
  });

  // Startup, `pi -c`, /resume, /new, a fork: adopt, import and sync the session's tasks.
  // Pi may fire it twice for one switch; the sidecar's answer is idempotent.
  pi.on("session_start", async (event, ctx) => {
    notify = (text) => ctx.ui.notify(text, "warning");
    try {
      const view = await client.sessionStart({
        session: session(ctx),
        known_tasks: knownTasks(ctx.sessionManager.getEntries()),
        reason: (event as { reason?: string }).reason ?? null,
      });
      await render(view, ctx);
      await watch(ctx);
    } catch (err) {
      // A sidecar that answered with an error is worth a line; one that cannot be
      // found or started is reported by the first /embark, not at every start of Pi.
      if (err instanceof RpcError) ctx.ui.notify(errorText(err), "warning");
      else console.error(`pi-embark: session start: ${errorText(err)}`);
    }
  });

  pi.on("session_shutdown", async () => {
    watched = undefined;
    current = undefined;
    await client.stop();
  });
}

function session(ctx: ExtensionContext): SessionContext {
  const file = ctx.sessionManager.getSessionFile();
  return {
    session_id: ctx.sessionManager.getSessionId(),
    cwd: ctx.cwd,
    ...(typeof file === "string" ? { session_file: file } : {}),
  };
}

/** The task ids the session's own entries name (what the shim mirrored there). */
export function knownTasks(entries: readonly unknown[]): string[] {
  const ids = new Set<string>();
  for (const entry of entries) {
    const e = entry as { type?: unknown; customType?: unknown; data?: { task_id?: unknown } | null };
    if (e.type === "custom" && e.customType === TASK_ENTRY && typeof e.data?.task_id === "string") ids.add(e.data.task_id);
  }
  return [...ids];
}

/** A picker works in the TUI; in `--mode rpc` (stdio piped) the numbered board serves instead. */
function interactive(ctx: ExtensionContext): boolean {
  return ctx.hasUI && process.stdin.isTTY === true && process.stdout.isTTY === true;
}
