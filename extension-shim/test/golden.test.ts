// The sidecar's golden transcripts (sidecar/tests/golden/*.ndjson, format in
// its README) replayed against the real binary from TypeScript, through this
// package's NDJSON framing. Every error answer must be one the generated
// METHOD_ERRORS (or LINE_ERRORS) allow for its request, with the generated number,
// and every frame must match the committed schemas/v1/sidecar.openrpc.json (a
// result its method's result schema, an error's data ErrorData, a notification LiveUpdate).
// Only the top-level files: the broker ones (golden/broker/) need the broker
// binary, a runner played through its API and the run normaliser, and are
// replayed by sidecar/tests/golden_broker.rs; this framing reads them alike.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import Schema from "typebox/schema";
import { LineSplitter } from "../src/ndjson.ts";
import { ERROR_CODES, LINE_ERRORS, METHOD_ERRORS, type ErrorCode } from "../src/protocol.gen.ts";
import { StderrTail } from "../src/stderr-tail.ts";
import { requireSidecar, within, workspaceRoot } from "./support.ts";

type Step = { send: string } | { recv: unknown };

type OpenRpc = { components: { schemas: object }; methods: { name: string; result: { schema: object } }[] };
const openRpc = JSON.parse(readFileSync(join(workspaceRoot, "schemas", "v1", "sidecar.openrpc.json"), "utf8")) as OpenRpc;
/** A checker of `schema` with the document's components in reach of its `$ref`s. */
const checker = (schema: object) => Schema.Compile({ ...schema, components: openRpc.components });
const resultCheckers = new Map(openRpc.methods.map((m) => [m.name, checker(m.result.schema)]));
const errorData = checker({ $ref: "#/components/schemas/ErrorData" });
const liveUpdate = checker({ $ref: "#/components/schemas/LiveUpdate" });

/** Fails unless `frame`, an answer to `method` (or a notification), matches the OpenRPC document. */
function checkSchema(file: string, frame: unknown, method: string | undefined): void {
  const { result, error, params } = frame as { result?: unknown; error?: { data?: unknown }; params?: { result?: unknown } };
  const shown = JSON.stringify(frame);
  if (params !== undefined) assert.ok(liveUpdate.Check(params.result), `${file}: a notification that is no LiveUpdate: ${shown}`);
  else if (error !== undefined) assert.ok(errorData.Check(error.data), `${file}: error.data is no ErrorData: ${shown}`);
  else {
    const check = method === undefined ? undefined : resultCheckers.get(method);
    assert.ok(check?.Check(result), `${file}: the result of ${String(method)} does not match its schema: ${shown}`);
  }
}

const goldenDir = join(workspaceRoot, "sidecar", "tests", "golden");
const transcripts = existsSync(goldenDir)
  ? readdirSync(goldenDir)
      .filter((f) => f.endsWith(".ndjson"))
      .sort()
  : [];
const cwd = mkdtempSync(join(tmpdir(), "embark-golden-"));
after(() => rmSync(cwd, { recursive: true, force: true }));

function load(file: string): Step[] {
  return readFileSync(join(goldenDir, file), "utf8")
    .split("\n")
    .filter((line) => line !== "")
    .map((line, n) => {
      const step = JSON.parse(line) as Record<string, unknown>;
      if (typeof step.send === "string" && !("recv" in step)) return { send: step.send };
      if ("recv" in step && !("send" in step)) return { recv: step.recv };
      throw new Error(`${file}:${n + 1}: expected {"send": string} or {"recv": value}`);
    });
}

/** The method each request id of a transcript called (lines that are not requests are skipped). */
function methodsById(steps: Step[]): Map<string, string> {
  const methods = new Map<string, string>();
  for (const step of steps) {
    if (!("send" in step)) continue;
    try {
      const request = JSON.parse(step.send) as { id?: unknown; method?: unknown };
      if (typeof request.method === "string" && request.id !== undefined) methods.set(JSON.stringify(request.id), request.method);
    } catch {
      // Not JSON: a parse error, whose answer has id null.
    }
  }
  return methods;
}

/** Fails unless an error answer's kind is allowed for the method it answers, with the kind's number. */
function checkDeclared(file: string, answer: unknown, methods: Map<string, string>): void {
  const { id, error } = answer as { id?: unknown; error?: { code?: unknown; data?: { kind?: unknown } } };
  if (error === undefined) return;
  const kind = error.data?.kind as ErrorCode;
  assert.equal(error.code, ERROR_CODES[kind], `${file}: ${JSON.stringify(answer)} carries the number of its kind`);
  const method = methods.get(JSON.stringify(id));
  const declared: readonly string[] =
    method !== undefined && method in METHOD_ERRORS ? METHOD_ERRORS[method as keyof typeof METHOD_ERRORS] : [];
  assert.ok(
    (LINE_ERRORS as readonly string[]).includes(kind) || declared.includes(kind),
    `${file}: ${String(method)} answered ${kind}, which its METHODS entry does not declare: ${JSON.stringify(answer)}`,
  );
}

test("golden transcripts exist", () => {
  assert.ok(transcripts.length >= 1, `no *.ndjson in ${goldenDir}`);
});

for (const file of transcripts) {
  test(`golden ${file} replays against the binary`, async (t) => {
    const path = requireSidecar(t);
    if (path === undefined) return;
    const steps = load(file);
    const methods = methodsById(steps);
    // The transcripts assume a clean configuration: no EMBARK_* and no config file.
    const child = spawn(path, ["--stdio"], {
      cwd,
      env: { PATH: process.env.PATH ?? "", EMBARK_LOG: "error" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const stderr = new StderrTail();
    child.stderr.on("data", (c: Buffer) => stderr.push(c));
    const lines: string[] = [];
    let wake: () => void = () => {};
    const splitter = new LineSplitter();
    child.stdout.on("data", (chunk: Buffer) => {
      lines.push(...splitter.push(chunk));
      wake();
    });
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on("close", (code, signal) => {
        const last = splitter.end();
        if (last !== undefined) lines.push(last);
        wake();
        resolve({ code, signal });
      }),
    );
    const nextLine = async (what: string): Promise<string> => {
      const deadline = Date.now() + 20_000;
      while (lines.length === 0) {
        if (child.exitCode !== null || Date.now() > deadline) {
          throw new Error(`${file}: no ${what}; stderr:\n${stderr.lastLines().join("\n")}`);
        }
        await new Promise<void>((r) => {
          const timer = setTimeout(r, 200);
          wake = () => {
            clearTimeout(timer);
            r();
          };
        });
      }
      return lines.shift() as string;
    };

    try {
      let answer = 0;
      for (const [i, step] of steps.entries()) {
        if ("send" in step) {
          child.stdin.write(`${step.send}\n`);
          // A send with no recv before the next send must produce no output;
          // that is checked when the next recv sees exactly its own answer.
        } else {
          answer++;
          const line = await nextLine(`answer ${answer} (step ${i + 1})`);
          const got: unknown = JSON.parse(line);
          assert.deepEqual(got, step.recv, `${file}: answer ${answer} (step ${i + 1}) differs`);
          checkDeclared(file, got, methods);
          checkSchema(file, got, methods.get(JSON.stringify((got as { id?: unknown }).id)));
        }
      }
      child.stdin.end();
      const exit = await within(20_000, `${file}: exit after EOF`, closed);
      assert.deepEqual(lines, [], `${file}: output after the transcript`);
      assert.deepEqual(exit, { code: 0, signal: null }, `${file}: exit status; stderr:\n${stderr.lastLines().join("\n")}`);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  });
}
