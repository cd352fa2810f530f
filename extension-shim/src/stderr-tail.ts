// The last few KiB of the sidecar's stderr, kept for error messages and never
// printed: in RPC mode Pi's stdout is a protocol stream, and the TUI owns the
// terminal.

import { StringDecoder } from "node:string_decoder";

export class StderrTail {
  readonly #maxChars: number;
  readonly #decoder = new StringDecoder("utf8");
  #text = "";

  constructor(maxChars = 8 * 1024) {
    this.#maxChars = maxChars;
  }

  push(chunk: Buffer | string): void {
    this.#text += typeof chunk === "string" ? chunk : this.#decoder.write(chunk);
    if (this.#text.length > this.#maxChars) this.#text = this.#text.slice(this.#text.length - this.#maxChars);
  }

  /** The last `count` non-empty lines (the first may be cut short by the bound). */
  lastLines(count = 20): string[] {
    const lines = this.#text.split("\n").map((l) => l.replace(/\r$/, ""));
    return lines.filter((l) => l.trim() !== "").slice(-count);
  }
}
