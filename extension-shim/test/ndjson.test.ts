import assert from "node:assert/strict";
import { test } from "node:test";
import { encodeLine, LineSplitter } from "../src/ndjson.ts";

const bytes = (s: string): Buffer => Buffer.from(s, "utf8");

test("a line split across chunks comes out once, whole", () => {
  const s = new LineSplitter();
  assert.deepEqual(s.push(bytes('{"id":1,"res')), []);
  assert.deepEqual(s.push(bytes('ult":"ok"}')), []);
  assert.deepEqual(s.push(bytes('\n{"id":2}\n{"id"')), ['{"id":1,"result":"ok"}', '{"id":2}']);
  assert.deepEqual(s.push(bytes(":3}\n")), ['{"id":3}']);
  assert.equal(s.end(), undefined);
});

test("CRLF line ends lose the CR; a lone CR inside a line stays", () => {
  const s = new LineSplitter();
  assert.deepEqual(s.push(bytes('{"a":1}\r\n{"b":"x\ry"}\r')), ['{"a":1}']);
  // The CR before a LF that arrives in the next chunk is still stripped.
  assert.deepEqual(s.push(bytes("\n")), ['{"b":"x\ry"}']);
});

test("U+2028 and U+2029 inside a string do not split the line", () => {
  const value = { text: "before\u2028middle\u2029after" };
  const line = JSON.stringify(value); // JSON.stringify leaves U+2028/9 raw
  assert.ok(line.includes("\u2028"), "the test needs the raw separator in the line");
  const s = new LineSplitter();
  const lines = s.push(bytes(`${line}\n`));
  assert.equal(lines.length, 1);
  assert.deepEqual(JSON.parse(lines[0] as string), value);
});

test("a multi-byte character split across chunks is decoded intact", () => {
  const text = '{"t":"é€😀"}\n';
  const all = bytes(text);
  // Cut inside every multi-byte sequence in turn, and also feed byte by byte.
  for (let cut = 1; cut < all.length; cut++) {
    const s = new LineSplitter();
    const lines = [...s.push(all.subarray(0, cut)), ...s.push(all.subarray(cut))];
    assert.deepEqual(lines, [text.slice(0, -1)], `cut at byte ${cut}`);
  }
  const s = new LineSplitter();
  const lines: string[] = [];
  for (const b of all) lines.push(...s.push(Uint8Array.of(b)));
  assert.deepEqual(lines, ['{"t":"é€😀"}']);
});

test("the unterminated last line is returned by end()", () => {
  const s = new LineSplitter();
  assert.deepEqual(s.push(bytes('{"a":1}\n{"b":')), ['{"a":1}']);
  assert.equal(s.end(), '{"b":');
  assert.equal(s.end(), undefined);
});

test("empty lines are kept as empty strings (the reader skips them)", () => {
  const s = new LineSplitter();
  assert.deepEqual(s.push(bytes("\n\r\nx\n")), ["", "", "x"]);
});

test("a line over the limit is reported once, dropped, and splitting resumes after it", () => {
  const limits: number[] = [];
  const s = new LineSplitter({ maxLineBytes: 8, onTooLong: (l) => limits.push(l) });
  assert.deepEqual(s.push(bytes("ok\n0123456789")), ["ok"]);
  assert.deepEqual(limits, [8]);
  assert.deepEqual(s.push(bytes("more of the long line")), []);
  assert.deepEqual(s.push(bytes("tail\nnext\n")), ["next"]);
  assert.deepEqual(limits, [8]);
});

test("the buffer a chunk came in may be reused by the caller", () => {
  const s = new LineSplitter();
  const chunk = bytes("abc");
  s.push(chunk);
  chunk.fill(0x7a); // "zzz"
  assert.deepEqual(s.push(bytes("\n")), ["abc"]);
});

test("encodeLine writes one LF-terminated line, escaping newlines in strings", () => {
  const line = encodeLine({ line: "a\nb\u2028c" });
  assert.equal(line.indexOf("\n"), line.length - 1);
  assert.deepEqual(JSON.parse(line), { line: "a\nb\u2028c" });
});
