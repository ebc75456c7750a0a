import fs from 'node:fs';
import path from 'node:path';
import { ForkyError } from '@forky/base';
import { guestText } from './guest-text.js';

/**
 * A tar reader for archives a hostile guest made, writing into a fresh directory of ours. It takes
 * ustar, GNU (long names `L`/`K`) and pax (`x`) headers, and makes only regular files, directories
 * and symlinks whose target is relative with no `..`; everything else (devices, FIFOs, hard links,
 * absolute or `..` names and targets) is skipped and said through `onSkip`. It never follows a
 * symlink (every parent is lstat'ed to be a real directory; files are opened O_EXCL|O_NOFOLLOW),
 * never overwrites, keeps no setuid/setgid/sticky bit and no owner. Memory: one header block and
 * at most META_MAX of names; a file's bytes go to disk as they come (`write` resolves once they did).
 */

const BLOCK = 512;
/** The most a GNU long name or link (`L`, `K`) or a pax header (`x`, `g`) may hold. */
export const META_MAX = 64 * 1024;

const bad = (msg: string): ForkyError => new ForkyError('INCOMPATIBLE', `the guest's tar stream: ${msg}`);

function fsError(e: unknown, what: string): ForkyError {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const kind = code === 'EEXIST' ? 'CONFLICT' : code === 'ENOSPC' || code === 'EDQUOT' ? 'CAPACITY' : 'INTERNAL';
  return new ForkyError(kind, `${what}: ${guestText(e instanceof Error ? e.message : String(e))}`, { cause: e });
}

const cstr = (b: Buffer, off: number, len: number): string => {
  const f = b.subarray(off, off + len);
  const nul = f.indexOf(0);
  return f.subarray(0, nul < 0 ? f.length : nul).toString('utf8');
};

/** An octal field (NUL or space padded), or for a size a base-256 one (GNU, high bit set). */
function num(b: Buffer, off: number, len: number, what: string): number {
  const f = b.subarray(off, off + len);
  if (((f[0] as number) & 0x80) !== 0) {
    if (f[0] !== 0x80) throw bad(`${what}: a negative or too large base-256 number`);
    let n = 0;
    for (const x of f.subarray(1)) n = n * 256 + x;
    if (!Number.isSafeInteger(n)) throw bad(`${what}: too large`);
    return n;
  }
  const s = f
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (!/^[0-7]+$/.test(s)) throw bad(`${what}: not an octal number (${JSON.stringify(guestText(s))})`);
  const n = parseInt(s, 8);
  if (!Number.isSafeInteger(n)) throw bad(`${what}: too large`);
  return n;
}

/** pax records `LEN key=value\n`: the keys we use (path, linkpath, size). */
function parsePax(b: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < b.length) {
    const sp = b.indexOf(0x20, pos);
    const len = sp < 0 ? NaN : Number(b.subarray(pos, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= sp - pos || pos + len > b.length || b[pos + len - 1] !== 0x0a) throw bad('a bad pax record');
    const rec = b.subarray(sp + 1, pos + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq < 1) throw bad('a bad pax record');
    out[rec.slice(0, eq)] = rec.slice(eq + 1);
    pos += len;
  }
  return out;
}

/** An entry's name as components under the root, or why it is refused. */
function components(name: string): string[] | string {
  if (name.startsWith('/')) return 'an absolute name';
  if (name.includes('\0')) return 'a name with NUL';
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  return parts.includes('..') ? 'a name with ..' : parts;
}

export interface UntarResult {
  files: number;
  dirs: number;
  symlinks: number;
  skipped: number;
  /** Bytes of the files' contents. */
  bytes: number;
}

type Sink = { to: 'file'; fh: fs.promises.FileHandle } | { to: 'meta'; type: string; parts: Buffer[] } | { to: 'none' };

export class Untar {
  readonly result: UntarResult = { files: 0, dirs: 0, symlinks: 0, skipped: 0, bytes: 0 };
  #head = Buffer.alloc(BLOCK);
  #headLen = 0;
  #offset = 0;
  #done = false;
  /** The payload (then padding) left of the entry being read, and where its bytes go. */
  #left = 0;
  #pad = 0;
  #sink: Sink = { to: 'none' };
  #next: { path?: string; linkpath?: string; size?: number } = {};
  #verified = '';

  constructor(
    readonly root: string,
    readonly onSkip: (line: string) => Promise<void> | void,
  ) {}

  /** Takes the next bytes of the archive; resolves once they are on disk. */
  async write(chunk: Uint8Array): Promise<void> {
    let b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    while (b.length > 0 && !this.#done) {
      if (this.#left > 0 || this.#pad > 0) {
        const n = Math.min(b.length, this.#left > 0 ? this.#left : this.#pad);
        if (this.#left > 0) {
          await this.#take(b.subarray(0, n));
          this.#left -= n;
          if (this.#left === 0) await this.#finish();
        } else this.#pad -= n;
        this.#offset += n;
        b = b.subarray(n);
        continue;
      }
      const n = Math.min(b.length, BLOCK - this.#headLen);
      b.copy(this.#head, this.#headLen, 0, n);
      this.#headLen += n;
      b = b.subarray(n);
      if (this.#headLen < BLOCK) break;
      this.#headLen = 0;
      await this.#header(this.#head);
      this.#offset += BLOCK;
    }
  }

  /** The archive's end: it must have come to its end-of-archive block. */
  async end(): Promise<UntarResult> {
    await this.close();
    if (!this.#done) throw bad(`truncated at byte ${this.#offset + this.#headLen} (no end-of-archive block)`);
    return this.result;
  }

  /** Closes the file being written, if any (on every way out). */
  async close(): Promise<void> {
    const s = this.#sink;
    this.#sink = { to: 'none' };
    if (s.to === 'file') await s.fh.close().catch(() => undefined);
  }

  async #take(b: Buffer): Promise<void> {
    const s = this.#sink;
    if (s.to === 'meta') s.parts.push(Buffer.from(b));
    else if (s.to === 'file') {
      for (let off = 0; off < b.length;) {
        const { bytesWritten } = await s.fh.write(b, off).catch((e: unknown) => Promise.reject(fsError(e, 'writing a file')));
        off += bytesWritten;
      }
      this.result.bytes += b.length;
    }
  }

  async #finish(): Promise<void> {
    const s = this.#sink;
    if (s.to !== 'meta') return this.close();
    this.#sink = { to: 'none' };
    const data = Buffer.concat(s.parts);
    if (s.type === 'L') this.#next.path = cstr(data, 0, data.length);
    else if (s.type === 'K') this.#next.linkpath = cstr(data, 0, data.length);
    else if (s.type === 'x') {
      const pax = parsePax(data);
      if (pax.path !== undefined) this.#next.path = pax.path;
      if (pax.linkpath !== undefined) this.#next.linkpath = pax.linkpath;
      if (pax.size !== undefined) {
        if (!/^\d{1,15}$/.test(pax.size)) throw bad('a bad pax size');
        this.#next.size = Number(pax.size);
      }
    }
  }

  async #header(h: Buffer): Promise<void> {
    if (h.every((x) => x === 0)) {
      this.#done = true;
      return;
    }
    const want = num(h, 148, 8, 'checksum');
    let unsigned = 0;
    let signed = 0;
    for (let i = 0; i < BLOCK; i++) {
      const v = i >= 148 && i < 156 ? 0x20 : (h[i] as number);
      unsigned += v;
      signed += (v << 24) >> 24;
    }
    if (want !== unsigned && want !== signed) throw bad(`bad header checksum at byte ${this.#offset} (not a tar archive?)`);
    const type = h[156] === 0 ? '0' : String.fromCharCode(h[156] as number);
    const ustar = h.subarray(257, 263).toString('latin1') === 'ustar\0';
    const prefix = ustar ? cstr(h, 345, 155) : '';
    const meta = 'LKxg'.includes(type);
    // A long name, link or pax header is for the next real entry: several may come before it.
    const next = meta ? {} : this.#next;
    if (!meta) this.#next = {};
    const name = next.path ?? (prefix ? `${prefix}/${cstr(h, 0, 100)}` : cstr(h, 0, 100));
    const link = next.linkpath ?? cstr(h, 157, 100);
    const size = next.size ?? num(h, 124, 12, 'size');
    const mode = num(h, 100, 8, 'mode') & 0o777;
    this.#left = size;
    this.#pad = (BLOCK - (size % BLOCK)) % BLOCK;
    this.#sink = { to: 'none' };
    if (meta) {
      if (size > META_MAX) throw bad(`a ${type} header of ${size} bytes (at most ${META_MAX})`);
      this.#sink = { to: 'meta', type, parts: [] };
    } else await this.#entry(type, name, link, mode);
    if (size === 0) await this.#finish();
  }

  async #skip(name: string, why: string): Promise<void> {
    this.result.skipped++;
    await this.onSkip(`# skipped ${guestText(name)}: ${why}`);
  }

  async #entry(type: string, name: string, link: string, mode: number): Promise<void> {
    const what = { '1': 'a hard link', '3': 'a character device', '4': 'a block device', '6': 'a FIFO' }[type];
    if (!'0725'.includes(type) || what) return this.#skip(name, what ?? `an entry of type ${JSON.stringify(guestText(type))}`);
    const parts = components(name);
    if (typeof parts === 'string') return this.#skip(name, parts);
    if (parts.length === 0) return type === '5' ? undefined : this.#skip(name, 'not a directory, as the root');
    if (!(await this.#parents(parts.slice(0, -1)))) return this.#skip(name, 'a parent is not a directory');
    const target = path.join(this.root, ...parts);
    try {
      if (type === '5') {
        await fs.promises.mkdir(target, { mode: mode | 0o700 }).catch(async (e: unknown) => {
          if (!(await fs.promises.lstat(target)).isDirectory()) throw e;
        });
        this.result.dirs++;
      } else if (type === '2') {
        if (link === '' || link.startsWith('/') || link.includes('\0') || link.split('/').includes('..'))
          return this.#skip(name, `a symlink to ${guestText(link)} (absolute, empty or with ..)`);
        await fs.promises.symlink(link, target);
        this.result.symlinks++;
      } else {
        const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
        this.#sink = { to: 'file', fh: await fs.promises.open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode) };
        this.result.files++;
      }
    } catch (e) {
      throw fsError(e, `extracting ${guestText(parts.join('/'))}`);
    }
  }

  /** Whether every parent is a real directory (lstat: a symlink is not), making missing ones. */
  async #parents(parts: string[]): Promise<boolean> {
    const dir = path.join(this.root, ...parts);
    if (parts.length === 0 || dir === this.#verified) return true;
    let p = this.root;
    for (const c of parts) {
      p = path.join(p, c);
      const st = await fs.promises.lstat(p).catch(() => undefined);
      if (!st) await fs.promises.mkdir(p, { mode: 0o755 }).catch((e: unknown) => Promise.reject(fsError(e, 'making a directory')));
      else if (!st.isDirectory()) return false;
    }
    this.#verified = dir;
    return true;
  }
}
