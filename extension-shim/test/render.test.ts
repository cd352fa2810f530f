import assert from "node:assert/strict";
import { test } from "node:test";
import type { View } from "../src/protocol.gen.ts";
import { errorText, formatTable, renderView, type ViewMessages, type ViewUi } from "../src/render.ts";

/** A recording stand-in for the slices of Pi's ctx.ui and pi that a View uses. */
function recorder(): { ui: ViewUi; pi: ViewMessages; calls: unknown[][] } {
  const calls: unknown[][] = [];
  return {
    calls,
    ui: {
      notify: (message, type) => calls.push(["notify", message, type]),
      setStatus: (key, text) => calls.push(["setStatus", key, text]),
    },
    pi: { sendMessage: (message) => calls.push(["sendMessage", message]) },
  };
}

test("blocks become notifications in order, with their tone; then status; then the message", () => {
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
    ["notify", "queued", "info"],
    ["notify", "dirty tree", "warning"],
    ["notify", "no broker", "error"],
    ["setStatus", "embark", "embark: 1 running"],
    [
      "sendMessage",
      { customType: "embark-task", content: "**task** abc", display: true, details: { task_id: "abc", state: "queued" } },
    ],
  ]);
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
  assert.deepEqual(r.calls, [
    ["notify", "choose one", "info"],
    ["notify", '(this version of pi-embark cannot show a "chart" block)', "info"],
  ]);
});

test("errorText uses the message of an Error", () => {
  assert.equal(errorText(new Error("boom")), "boom");
  assert.equal(errorText("weird"), "embark failed: weird");
});
