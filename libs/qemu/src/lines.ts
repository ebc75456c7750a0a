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

/** Stands for a line longer than the bound: its bytes were dropped as they came, only counted. */
export class OverlongLine {
  constructor(readonly bytes: number) {}
}

/**
 * A LineSplitter that survives a line over its bound: once a line passes `maxLine`, what it has
 * is dropped and the rest of it discarded as it streams in, so memory stays at about `maxLine`;
 * at its newline it yields an OverlongLine, and the lines after it come through as usual.
 * Only what is kept is copied out of a chunk, in pieces joined once at the line's newline.
 */
export class BoundedLineSplitter {
  #parts: Buffer[] = [];
  #length = 0;
  /** Bytes of an overlong line dropped so far; undefined while no line is being dropped. */
  #dropping: number | undefined;

  constructor(readonly maxLine: number) {}

  push(chunk: Buffer): Array<Buffer | OverlongLine> {
    const out: Array<Buffer | OverlongLine> = [];
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); ; nl = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, nl === -1 ? chunk.length : nl);
      this.#take(piece);
      if (nl === -1) break;
      if (this.#dropping !== undefined) out.push(new OverlongLine(this.#dropping));
      else {
        const line = this.#parts.length === 1 ? (this.#parts[0] as Buffer) : Buffer.concat(this.#parts, this.#length);
        if (line.some((b) => b !== 0x0d && b !== 0x20)) out.push(line);
      }
      this.reset();
      start = nl + 1;
    }
    return out;
  }

  reset(): void {
    this.#parts = [];
    this.#length = 0;
    this.#dropping = undefined;
  }

  #take(piece: Buffer): void {
    if (piece.length === 0) return;
    if (this.#dropping !== undefined) {
      this.#dropping += piece.length;
      return;
    }
    if (this.#length + piece.length > this.maxLine) {
      this.#dropping = this.#length + piece.length;
      this.#parts = [];
      this.#length = 0;
      return;
    }
    // A copy: the chunk may be a reused read buffer (connectUnix's onRead).
    this.#parts.push(Buffer.from(piece));
    this.#length += piece.length;
  }
}
