// EmbarkClient and Sidecar against the real embark-sidecar binary.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { EmbarkClient } from "../src/client.ts";
import { ERROR_CODES, METHOD, PROTOCOL_VERSION, SUPPORTED_PROTOCOLS, type HelloResult, type View } from "../src/protocol.gen.ts";
import { RpcError, Sidecar, SidecarError } from "../src/sidecar.ts";
import { requireSidecar, within } from "./support.ts";

const cwd = mkdtempSync(join(tmpdir(), "embark-e2e-"));
after(() => rmSync(cwd, { recursive: true, force: true }));
const session = { session_id: "01960000-0000-7000-8000-000000000001", cwd };

/** The sidecar's environment: none of the developer's embark settings or config file leak in. */
function cleanEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? "", EMBARK_LOG: "error" };
}

test("hello, then help: a View whose first block is text", async (t) => {
  const path = requireSidecar(t);
  if (path === undefined) return;
  const client = new EmbarkClient({ locate: () => ({ path, source: "env" }), env: cleanEnv() });
  try {
    const view = await within(30_000, "help", client.command("help", session));
    const hello = client.hello as HelloResult;
    assert.equal(hello.protocol, PROTOCOL_VERSION);
    assert.deepEqual(hello.supported, SUPPORTED_PROTOCOLS, "the versions generated from the same core as the sidecar");
    assert.equal(hello.server.name, "embark-sidecar");
    assert.ok(Array.isArray(view.blocks) && view.blocks.length >= 1, JSON.stringify(view));
    const first = view.blocks[0];
    assert.equal(first?.type, "text", JSON.stringify(view));
    if (first?.type === "text") {
      assert.match(first.text, /\/embark/);
      assert.equal(first.tone, "info");
    }
  } finally {
    await client.stop();
  }
});

test("the raw protocol: command before hello, unknown method, unsupported version", async (t) => {
  const path = requireSidecar(t);
  if (path === undefined) return;
  const sidecar = new Sidecar({ path, cwd, env: cleanEnv() });
  try {
    await assert.rejects(sidecar.call(METHOD.command, { line: "help", session }), (err: unknown) => {
      assert.ok(err instanceof RpcError, String(err));
      assert.equal(err.kind, "handshake_required");
      assert.equal(err.code, ERROR_CODES.handshake_required);
      return true;
    });
    await assert.rejects(sidecar.call(METHOD.hello, { protocol: 99 }), (err: unknown) => {
      assert.ok(err instanceof RpcError, String(err));
      assert.equal(err.kind, "unsupported_protocol");
      assert.equal(err.code, ERROR_CODES.unsupported_protocol);
      return true;
    });
    const hello = await sidecar.call<HelloResult>(METHOD.hello, {
      protocol: PROTOCOL_VERSION,
      client: { name: "pi-embark-test", version: "0" },
    });
    assert.equal(hello.protocol, PROTOCOL_VERSION);
    await assert.rejects(sidecar.call("embark.nope", {}), (err: unknown) => {
      assert.ok(err instanceof RpcError, String(err));
      assert.equal(err.code, ERROR_CODES.method_not_found);
      assert.equal(err.kind, "method_not_found");
      return true;
    });
    assert.equal(sidecar.usable, true);
  } finally {
    await sidecar.stop();
  }
  assert.deepEqual(sidecar.exitStatus, { code: 0, signal: null }, "the sidecar exits 0 on stdin EOF");
});

test("a killed sidecar is replaced by the next command", async (t) => {
  const path = requireSidecar(t);
  if (path === undefined) return;
  const client = new EmbarkClient({ locate: () => ({ path, source: "env" }), env: cleanEnv() });
  try {
    await client.command("help", session);
    const first = client.sidecar as Sidecar;
    assert.ok(first.pid !== undefined);
    process.kill(first.pid, "SIGKILL");
    await within(5_000, "the kill", first.exited);
    assert.equal(first.usable, false);
    const view: View = await within(30_000, "help after respawn", client.command("help", session));
    assert.ok(view.blocks.length >= 1);
    const second = client.sidecar as Sidecar;
    assert.notEqual(second, first);
    assert.notEqual(second.pid, first.pid);
  } finally {
    await client.stop();
  }
});

test("a sidecar that fails at startup reports its exit and stderr", async (t) => {
  const path = requireSidecar(t);
  if (path === undefined) return;
  const client = new EmbarkClient({
    locate: () => ({ path, source: "env" }),
    args: ["--stdio", "--no-such-flag-for-embark"],
    env: cleanEnv(),
  });
  try {
    await assert.rejects(within(30_000, "the failure", client.command("help", session)), (err: unknown) => {
      assert.ok(err instanceof SidecarError, String(err));
      assert.match(err.message, /exited with code \d+ before answering embark\.hello/);
      assert.match(err.message, /Last lines of its stderr:\n[\s\S]*--no-such-flag-for-embark/);
      return true;
    });
  } finally {
    await client.stop();
  }
});

test("watch needs a broker: refused with a config error", async (t) => {
  const path = requireSidecar(t);
  if (path === undefined) return;
  const client = new EmbarkClient({ locate: () => ({ path, source: "env" }), env: cleanEnv() });
  try {
    await assert.rejects(
      within(30_000, "watch", client.watch(session, () => {})),
      (err: unknown) => err instanceof RpcError && err.kind === "config",
    );
  } finally {
    await client.stop();
  }
});

test("a watched sidecar that is killed is replaced at once, with one notice", async (t) => {
  const path = requireSidecar(t);
  if (path === undefined) return;
  const notices: string[] = [];
  // An unreachable broker: the watch is accepted and keeps trying to open its tail.
  const env = {
    ...cleanEnv(),
    EMBARK_BROKER_URL: "http://127.0.0.1:1",
    EMBARK_CLIENT_SECRET: "not-a-real-secret-0123456789",
    EMBARK_STATE_DIR: join(cwd, "state"),
  };
  const client = new EmbarkClient({ locate: () => ({ path, source: "env" }), env, onRestart: (n) => notices.push(n) });
  try {
    await within(30_000, "watch", client.watch(session, () => {}));
    const first = client.sidecar as Sidecar;
    assert.ok(first.pid !== undefined);
    process.kill(first.pid, "SIGKILL");
    await within(5_000, "the kill", first.exited);
    const deadline = Date.now() + 15_000;
    while ((client.sidecar === first || client.sidecar === undefined) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const second = client.sidecar as Sidecar;
    assert.notEqual(second, first, "replaced without a command");
    assert.equal(notices.length, 1, JSON.stringify(notices));
    assert.match(notices[0] ?? "", /was killed by SIGKILL; started a new one/);
  } finally {
    await client.stop();
  }
});
