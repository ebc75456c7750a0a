/** Splits a byte stream into newline-terminated lines; QMP and QGA both frame JSON that way. */
export class LineSplitter {
  #buf: Buffer = Buffer.alloc(0);
  /** Upper bound on one line: a peer that never sends a newline cannot make us buffer forever. */
  constructor(readonly maxLine = 64 << 20) {}

  push(chunk: Buffer): Buffer[] {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const lines: Buffer[] = [];
    let start = 0;
    for (let nl = this.#buf.indexOf(0x0a, start); nl !== -1; nl = this.#buf.indexOf(0x0a, start)) {
      lines.push(this.#buf.subarray(start, nl));
      start = nl + 1;
    }
    this.#buf = this.#buf.subarray(start);
    if (this.#buf.length > this.maxLine) throw new Error(`line longer than ${this.maxLine} bytes`);
    return lines.filter((l) => l.some((b) => b !== 0x0d && b !== 0x20));
  }

  reset(): void {
    this.#buf = Buffer.alloc(0);
  }
}
