import assert from "node:assert/strict";
import { test } from "node:test";
import type { View } from "../src/protocol.gen.ts";
import { errorText, formatTable, renderView, sessionHistory, type ViewMessages, type ViewUi } from "../src/render.ts";

/** A recording stand-in for the slices of Pi's ctx.ui and pi that a View uses. */
function recorder(): { ui: ViewUi; pi: ViewMessages; calls: unknown[][] } {
  const calls: unknown[][] = [];
  return {
    calls,
    ui: {
      notify: (message, type) => calls.push(["notify", message, type]),
      setStatus: (key, text) => calls.push(["setStatus", key, text]),
      setWidget: (key, lines, options) => calls.push(["setWidget", key, lines, options]),
    },
    pi: { sendMessage: (message, options) => calls.push(options ? ["sendMessage", message, options] : ["sendMessage", message]) },
  };
}

test("messages first, then all blocks as ONE notification toned by the worst, then status", () => {
  const r = recorder();
  const view: View = {
    blocks: [
      { type: "text", text: "queued", tone: "info" },
      { type: "text", text: "dirty tree", tone: "warning" },
      { type: "text", text: "no broker", tone: "error" },
    ],
    status: { key: "embark", text: "embark: 1 running" },
    message: { custom_type: "embark-task", content: "**task** abc", details: { task_id: "abc", state: "queued" } },
  };
  renderView(view, r.ui, r.pi);
  assert.deepEqual(r.calls, [
    [
      "sendMessage",
      { customType: "embark-task", content: "**task** abc", display: true, details: { task_id: "abc", state: "queued" } },
    ],
    ["notify", "queued\n\ndirty tree\n\nno broker", "error"],
    ["setStatus", "embark", "embark: 1 running"],
  ]);
});

test("a live update's notice never replaces the last command's answer in a chat that folds back-to-back notices", () => {
  // Pi's TUI shows an info notice that directly follows another in place of it;
  // a message in between ends the fold. This chat does the same.
  const chat: string[] = [];
  let lastWasNotice = false;
  const ui: ViewUi = {
    notify: (message) => {
      if (lastWasNotice) chat.pop();
      chat.push(`notice: ${message}`);
      lastWasNotice = true;
    },
    setStatus: () => {},
  };
  const pi: ViewMessages = {
    sendMessage: (message) => {
      chat.push(`message: ${message.content}`);
      lastWasNotice = false;
    },
  };
  renderView({ blocks: [{ type: "text", text: "Attached to task t1.", tone: "info" }] }, ui, pi);
  const ended: View = {
    blocks: [{ type: "text", text: "embark: task t2 succeeded.", tone: "info" }],
    message: { custom_type: "embark-result", content: "t2 done", details: {}, once_key: "t2:1:succeeded" },
  };
  renderView(ended, ui, pi);
  assert.deepEqual(chat, ["notice: Attached to task t1.", "message: t2 done", "notice: embark: task t2 succeeded."]);
});

test("a message with a once_key is added once: not again when the session branch already holds it", () => {
  const view: View = {
    blocks: [],
    message: { custom_type: "embark-result", content: "done", details: { task_id: "t1" }, once_key: "t1:1:succeeded" },
  };
  const first = recorder();
  renderView(view, first.ui, first.pi, { history: sessionHistory([]) });
  const sent = { customType: "embark-result", content: "done", display: true, details: { task_id: "t1", once_key: "t1:1:succeeded" } };
  assert.deepEqual(first.calls, [["sendMessage", sent]]);

  // Pi stores the sent message as a custom_message entry with its details.
  const entries = [{ type: "message" }, { type: "custom_message", customType: "embark-result", details: sent.details }];
  const again = recorder();
  renderView(view, again.ui, again.pi, { history: sessionHistory(entries) });
  assert.deepEqual(again.calls, [], "the same result is not added twice");

  const otherVerdict = recorder();
  renderView({ ...view, message: { ...view.message!, once_key: "t1:2:succeeded" } }, otherVerdict.ui, otherVerdict.pi, {
    history: sessionHistory(entries),
  });
  assert.equal(otherVerdict.calls.length, 1, "another key is another message");
});

test("a once-only message Pi has queued but not stored yet is not sent again by this process", () => {
  const view: View = {
    blocks: [],
    message: { custom_type: "embark-result", content: "done", details: {}, once_key: "t1:1:succeeded" },
  };
  const sentOnce = new Set<string>();
  const first = recorder();
  renderView(view, first.ui, first.pi, { history: sessionHistory([], sentOnce), idle: false });
  assert.deepEqual(first.calls, [
    [
      "sendMessage",
      { customType: "embark-result", content: "done", display: true, details: { once_key: "t1:1:succeeded" } },
      { deliverAs: "nextTurn" },
    ],
  ]);
  const second = recorder();
  renderView(view, second.ui, second.pi, { history: sessionHistory([], sentOnce) });
  assert.deepEqual(second.calls, [], "the branch does not hold it yet, but this process sent it");
});

test("a status with text null clears the status (undefined for Pi)", () => {
  const r = recorder();
  renderView({ blocks: [], status: { key: "embark", text: null } }, r.ui, r.pi);
  assert.deepEqual(r.calls, [["setStatus", "embark", undefined]]);
});

test("a View with nothing in it renders nothing", () => {
  const r = recorder();
  renderView({ blocks: [], status: null, message: null }, r.ui, r.pi);
  assert.deepEqual(r.calls, []);
});

test("a table is one notification: title first, then aligned columns", () => {
  const r = recorder();
  renderView(
    {
      blocks: [
        {
          type: "table",
          title: "Tasks in this session",
          columns: ["ID", "STATE", "PROMPT"],
          rows: [
            ["01J9", "running", "fix the flaky test"],
            ["01J8ABCDEF", "succeeded", "é😀"],
          ],
        },
      ],
    },
    r.ui,
    r.pi,
  );
  assert.deepEqual(r.calls, [
    [
      "notify",
      [
        "Tasks in this session",
        "ID          STATE      PROMPT",
        "----------  ---------  ------------------",
        "01J9        running    fix the flaky test",
        "01J8ABCDEF  succeeded  é😀",
      ].join("\n"),
      "info",
    ],
  ]);
});

test("table edge cases: no title, no rows, ragged rows, newlines in cells", () => {
  assert.equal(formatTable({ title: null, columns: ["A", "B"], rows: [] }), "A  B\n-  -\n(none)");
  assert.equal(
    formatTable({ columns: ["K", "V"], rows: [["a"], ["b", "two\nlines", "extra"]] }),
    ["K  V", "-  ---------  -----", "a", "b  two lines  extra"].join("\n"),
  );
});

test("an unknown block type (added in a later protocol) degrades instead of throwing", () => {
  const r = recorder();
  const view = { blocks: [{ type: "picker", text: "choose one" }, { type: "chart" }] } as unknown as View;
  renderView(view, r.ui, r.pi);
  assert.deepEqual(r.calls, [["notify", 'choose one\n\n(this version of pi-embark cannot show a "chart" block)', "info"]]);
});

const PICK: View = {
  blocks: [
    { type: "text", text: "header", tone: "info" },
    {
      type: "pick",
      title: "pick a task",
      items: [
        { label: "running  0190aaaa  2m  fix it", command: "status 0190aaaa" },
        { label: "queued   0190bbbb  1m  more", command: "status 0190bbbb" },
      ],
      hint: "Use a number with /embark status <n>.",
    },
  ],
  status: null,
  message: null,
};

test("a pick list outside the TUI is a numbered board inside the one notification", () => {
  const r = recorder();
  assert.equal(renderView(PICK, r.ui, r.pi), undefined);
  assert.deepEqual(r.calls, [
    [
      "notify",
      "header\n\npick a task\n  1. running  0190aaaa  2m  fix it\n  2. queued   0190bbbb  1m  more\nUse a number with /embark status <n>.",
      "info",
    ],
  ]);
});

test("in the TUI the pick list is handed back for ctx.ui.select, the rest still notified", () => {
  const r = recorder();
  const pick = renderView(PICK, r.ui, r.pi, { interactive: true });
  assert.equal(pick?.items[1]?.command, "status 0190bbbb");
  assert.deepEqual(r.calls, [["notify", "header", "info"]]);
});

test("entries are appended to the session and every message is sent, once each", () => {
  const calls: unknown[][] = [];
  const pi = {
    sendMessage: (message: unknown) => calls.push(["sendMessage", message]),
    appendEntry: (customType: string, data?: unknown) => calls.push(["appendEntry", customType, data]),
  };
  const ui = { notify: () => {}, setStatus: () => {} };
  const result = (id: string) => ({ custom_type: "embark-result", content: id, details: {}, once_key: id });
  const view: View = {
    blocks: [],
    status: null,
    message: result("a"),
    messages: [result("b"), result("a")],
    entries: [{ custom_type: "embark-task", data: { task_id: "t1" } }],
  };
  renderView(view, ui, pi, { history: sessionHistory([]) });
  assert.deepEqual(
    calls.map((c) => (c[0] === "sendMessage" ? ["sendMessage", (c[1] as { content: string }).content] : c)),
    [
      ["appendEntry", "embark-task", { task_id: "t1" }],
      ["sendMessage", "a"],
      ["sendMessage", "b"],
    ],
  );
});

test("errorText uses the message of an Error", () => {
  assert.equal(errorText(new Error("boom")), "boom");
  assert.equal(errorText("weird"), "embark failed: weird");
});

test("a widget goes below the editor; lines null removes it", () => {
  const r = recorder();
  renderView({ blocks: [], status: null, message: null, widget: { key: "embark", lines: ["embark abc · running"] } }, r.ui, r.pi);
  renderView({ blocks: [], status: null, message: null, widget: { key: "embark", lines: null } }, r.ui, r.pi);
  renderView({ blocks: [], status: null, message: null }, r.ui, r.pi);
  assert.deepEqual(r.calls, [
    ["setWidget", "embark", ["embark abc · running"], { placement: "belowEditor" }],
    ["setWidget", "embark", undefined, { placement: "belowEditor" }],
  ]);
});
