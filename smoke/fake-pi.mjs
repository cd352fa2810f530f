#!/usr/bin/env node
// A scripted stand-in for `pi --mode rpc` that answers at once: one prompt
// (its response, agent_start, one assistant message, agent_end), the last
// assistant text and the session stats; it exits 0 when its stdin closes.
// For timings that must not include a real Pi's start-up
// (`npm run bench:task-start`) and for the fake docker's transcript mode.
// It takes (and ignores) Pi's arguments.

const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const message = { role: "assistant", content: [{ type: "text", text: "done" }], stopReason: "stop" };
const answers = {
  get_last_assistant_text: { text: "done" },
  get_session_stats: {
    userMessages: 1,
    assistantMessages: 1,
    toolCalls: 0,
    toolResults: 0,
    tokens: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0, total: 0 },
    cost: 0,
  },
};

/** Serves RPC on stdin/stdout; `onEnd` runs when stdin closes. */
export function serve(onEnd = () => process.exit(0)) {
  let rest = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    rest += chunk;
    let nl;
    while ((nl = rest.indexOf("\n")) >= 0) {
      const command = JSON.parse(rest.slice(0, nl));
      rest = rest.slice(nl + 1);
      out({ id: command.id, type: "response", command: command.type, success: true, data: answers[command.type] });
      if (command.type === "prompt") {
        out({ type: "agent_start" });
        out({ type: "message_end", message });
        out({ type: "agent_end", messages: [message] });
      }
    }
  });
  process.stdin.on("end", onEnd);
}

if (import.meta.url === `file://${process.argv[1]}`) serve();
