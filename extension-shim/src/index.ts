// pi-embark: the `/embark` command. A pipe and a renderer: every decision is
// made by embark-sidecar (a Rust binary spoken to over NDJSON JSON-RPC), so
// the sidecar's own tests reach all of the logic.

import type { ExtensionAPI } from "@mariozechner/pi-coding-agent";
import { EmbarkClient } from "./client.ts";
import { errorText, renderView, sessionHistory } from "./render.ts";

export default function embark(pi: ExtensionAPI): void {
  // One sidecar per Pi process, started by the first /embark.
  const client = new EmbarkClient();
  // Keys of once-only messages this process sent (Pi may still hold them in a queue).
  const sentOnce = new Set<string>();

  pi.registerCommand("embark", {
    description: "Hand a task to a remote runner (try /embark help)",
    handler: async (args, ctx) => {
      try {
        const view = await client.command(args, {
          session_id: ctx.sessionManager.getSessionId(),
          cwd: ctx.cwd,
        });
        renderView(view, ctx.ui, pi, {
          history: sessionHistory(ctx.sessionManager.getBranch(), sentOnce),
          idle: ctx.isIdle(),
        });
      } catch (err) {
        ctx.ui.notify(errorText(err), "error");
      }
    },
  });

  pi.on("session_shutdown", async () => {
    await client.stop();
  });
}
