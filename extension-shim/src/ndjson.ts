// NDJSON framing for the sidecar's stdout: one JSON value per line, LF only.
//
// Lines are split on the byte 0x0A ourselves rather than with `readline`,
// which also breaks lines at U+2028/U+2029 (legal, unescaped, inside JSON
// strings). 0x0A never occurs inside a multi-byte UTF-8 sequence, so bytes are
// kept until a whole line has arrived and only then decoded; a character split
// across two chunks is therefore never mangled.

/** Default cap on one buffered line: far above any view, far below memory trouble. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;

const LF = 0x0a;
const CR = 0x0d;

export class LineSplitter {
  readonly #maxLineBytes: number;
  readonly #onTooLong: (limit: number) => void;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  /** Set after an over-long line: bytes are skipped until the next LF. */
  #skipping = false;

  /**
   * `onTooLong` is called once for each line that grows past `maxLineBytes`
   * without an LF; that line is dropped and splitting resumes after its LF.
   */
  constructor(options: { maxLineBytes?: number; onTooLong?: (limit: number) => void } = {}) {
    this.#maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    this.#onTooLong = options.onTooLong ?? (() => {});
  }

  /**
   * Feeds one chunk; returns the complete lines it finished (without the LF
   * and without one trailing CR). Invalid UTF-8 becomes U+FFFD.
   */
  push(chunk: Uint8Array): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const lf = chunk.indexOf(LF, start);
      if (lf === -1) break;
      if (this.#skipping) {
        this.#skipping = false;
      } else {
        this.#append(chunk.subarray(start, lf));
        lines.push(this.#takeLine());
      }
      start = lf + 1;
    }
    if (start < chunk.length && !this.#skipping) {
      this.#append(chunk.subarray(start));
      if (this.#pendingBytes > this.#maxLineBytes) {
        this.#pending = [];
        this.#pendingBytes = 0;
        this.#skipping = true;
        this.#onTooLong(this.#maxLineBytes);
      }
    }
    return lines;
  }

  /** Ends the stream: returns the unterminated last line, if any. */
  end(): string | undefined {
    if (this.#skipping || this.#pendingBytes === 0) {
      this.#pending = [];
      this.#pendingBytes = 0;
      this.#skipping = false;
      return undefined;
    }
    return this.#takeLine();
  }

  #append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    // Copy: the caller may reuse its chunk buffer.
    this.#pending.push(Buffer.from(bytes));
    this.#pendingBytes += bytes.length;
  }

  #takeLine(): string {
    let bytes = this.#pending.length === 1 ? (this.#pending[0] as Buffer) : Buffer.concat(this.#pending);
    this.#pending = [];
    this.#pendingBytes = 0;
    if (bytes.length > 0 && bytes[bytes.length - 1] === CR) bytes = bytes.subarray(0, bytes.length - 1);
    // Buffer decoding keeps a leading U+FEFF (TextDecoder would drop it).
    return bytes.toString("utf8");
  }
}

/** Serializes one message as an NDJSON line. JSON.stringify never emits a raw LF. */
export function encodeLine(value: unknown): string {
  return `${JSON.stringify(value)}\n`;
}
