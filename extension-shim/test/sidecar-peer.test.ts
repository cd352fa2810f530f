// The JSON-RPC client against misbehaving peers: small node scripts that
// break the protocol in ways the real sidecar must never do, to prove each
// failure is reported promptly and clearly instead of hanging Pi.

import assert from "node:assert/strict";
import { tmpdir } from "node:os";
import { test } from "node:test";
import { ERROR_CODES, METHOD } from "../src/protocol.gen.ts";
import { RpcError, Sidecar, SidecarError } from "../src/sidecar.ts";
import { within } from "./support.ts";

/** A peer process running `code` under node. */
function peer(code: string, callTimeoutMs = 10_000): Sidecar {
  return new Sidecar({ path: process.execPath, args: ["-e", code], cwd: tmpdir(), callTimeoutMs });
}

// Reads NDJSON requests from stdin and calls `answer(request)` for each.
const SERVE = `
let buf = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf("\\n")) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    answer(JSON.parse(line));
  }
});
`;

test("replies are matched by id, even out of order and split into odd chunks", async () => {
  const p = peer(`
    const seen = [];
    function answer(req) {
      seen.push(req);
      if (seen.length < 2) return;
      // Answer the second call first, byte by byte, with U+2028 inside a string.
      for (const r of [seen[1], seen[0]]) {
        const line = JSON.stringify({ jsonrpc: "2.0", id: r.id, result: { echo: r.params, sep: "a\\u2028b" } }) + "\\r\\n";
        for (const b of Buffer.from(line)) process.stdout.write(Buffer.of(b));
      }
    }
    ${SERVE}`);
  try {
    const [a, b] = await within(10_000, "two replies", Promise.all([p.call("m", { n: "é" }), p.call("m", { n: 2 })]));
    assert.deepEqual(a, { echo: { n: "é" }, sep: "a\u2028b" });
    assert.deepEqual(b, { echo: { n: 2 }, sep: "a\u2028b" });
  } finally {
    await p.stop();
  }
});

test("a JSON-RPC error becomes an RpcError with code, message and kind", async () => {
  const p = peer(`
    function answer(req) {
      process.stdout.write(JSON.stringify({ jsonrpc: "2.0", id: req.id,
        error: { code: 1010, message: "usage: /embark <prompt>", data: { kind: "usage" } } }) + "\\n");
    }
    ${SERVE}`);
  try {
    await assert.rejects(p.call(METHOD.command, {}), (err: unknown) => {
      assert.ok(err instanceof RpcError);
      assert.equal(err.code, 1010);
      assert.equal(err.kind, "usage");
      assert.equal(err.method, METHOD.command);
      assert.equal(err.message, "usage: /embark <prompt>");
      return true;
    });
    assert.equal(p.usable, true, "an error reply leaves the sidecar usable");
  } finally {
    await p.stop();
  }
});

test("an error without data.kind is named by its code; an unknown code has no kind", async () => {
  const p = peer(`
    function answer(req) {
      const code = req.params.code;
      process.stdout.write(JSON.stringify({ jsonrpc: "2.0", id: req.id, error: { code, message: "no kind" } }) + "\\n");
    }
    ${SERVE}`);
  try {
    for (const [code, kind] of [
      [ERROR_CODES.timeout, "timeout"],
      [ERROR_CODES.invalid_params, "invalid_params"],
      [4242, undefined],
    ] as const) {
      await assert.rejects(p.call(METHOD.command, { code }), (err: unknown) => {
        assert.ok(err instanceof RpcError);
        assert.equal(err.code, code);
        assert.equal(err.kind, kind);
        return true;
      });
    }
  } finally {
    await p.stop();
  }
});

test("a non-JSON line on stdout fails the pending call at once and retires the process", async () => {
  const p = peer(`process.stdin.on("data", () => console.log("oops, a log line on stdout")); setInterval(() => {}, 1000);`);
  const started = Date.now();
  await assert.rejects(within(5_000, "the rejection", p.call(METHOD.hello, {})), (err: unknown) => {
    assert.ok(err instanceof SidecarError);
    assert.match(err.message, /wrote a line to stdout that is not JSON: "oops, a log line on stdout"/);
    assert.match(err.message, /before answering embark\.hello/);
    return true;
  });
  assert.ok(Date.now() - started < 5_000);
  assert.equal(p.usable, false);
  await within(5_000, "the peer to be stopped", p.exited);
});

test("a call that gets no answer times out with a clear error", async () => {
  // The first call is answered (so the peer is up whatever the machine's load), the second never is.
  const p = peer(
    `
    let calls = 0;
    function answer(req) {
      if (++calls > 1) return;
      process.stderr.write("thinking hard\\n");
      process.stdout.write(JSON.stringify({ jsonrpc: "2.0", id: req.id, result: {} }) + "\\n");
    }
    ${SERVE}`,
    200,
  );
  try {
    await within(10_000, "the first answer", p.call(METHOD.hello, {}, 10_000));
    await assert.rejects(p.call(METHOD.command, {}), (err: unknown) => {
      assert.ok(err instanceof SidecarError);
      assert.match(err.message, /did not answer embark\.command within 200 ms/);
      assert.match(err.message, /Last lines of its stderr:\nthinking hard/);
      return true;
    });
  } finally {
    await p.stop();
  }
});

test("a peer that dies mid-call fails the call with its exit code and the tail of its stderr", async () => {
  const p = peer(`
    process.stdin.once("data", () => {
      for (let i = 1; i <= 30; i++) process.stderr.write("log line " + i + "\\n");
      process.stderr.write("panicked at sidecar/src/main.rs: broker exploded\\n");
      process.exit(3);
    });`);
  await assert.rejects(within(10_000, "the rejection", p.call(METHOD.command, {})), (err: unknown) => {
    assert.ok(err instanceof SidecarError);
    assert.match(err.message, /exited with code 3 before answering embark\.command/);
    assert.match(err.message, /Last lines of its stderr:\n/);
    assert.match(err.message, /panicked at sidecar\/src\/main\.rs: broker exploded$/);
    assert.ok(!err.message.includes("log line 1\n"), "only the last lines are kept");
    return true;
  });
  assert.equal(p.usable, false);
  assert.deepEqual(p.exitStatus, { code: 3, signal: null });
  await assert.rejects(p.call(METHOD.command, {}), /exited with code 3/);
});

test("a binary that cannot be started is reported, not thrown inside Pi", async () => {
  const p = new Sidecar({ path: "/nonexistent/embark-sidecar", cwd: tmpdir() });
  await assert.rejects(within(5_000, "the rejection", p.call(METHOD.hello, {})), /could not be started: spawn \/nonexistent\/embark-sidecar ENOENT/);
  await within(5_000, "exit", p.exited);
  await p.stop();
});

test("stop() closes stdin, then sends SIGTERM to a peer that ignores EOF", async () => {
  const p = peer(`process.stdin.resume(); process.stdin.on("end", () => {}); setInterval(() => {}, 1000);`);
  await p.call("never-answered", {}, 50).catch(() => undefined); // make sure it is up
  const started = Date.now();
  await within(5_000, "stop", p.stop());
  assert.deepEqual(p.exitStatus, { code: null, signal: "SIGTERM" });
  assert.ok(Date.now() - started >= 450, "it waited the grace period first");
});

test("stop() lets a peer that exits on EOF go without a signal", async () => {
  const p = peer(`process.stdin.resume(); process.stdin.on("end", () => process.exit(0));`);
  await p.call("never-answered", {}, 50).catch(() => undefined);
  await within(5_000, "stop", p.stop());
  assert.deepEqual(p.exitStatus, { code: 0, signal: null });
});
