import type { AgentEnd, AgentMsg, GuestEvent, GuestProc, GuestRequest, GuestSession, GuestStream } from '@forky/agent';

/**
 * An in-memory forky-agent session of ours, scripted by the request (see `script`). Output is
 * made only as it is pulled from `events`, as the real session grants the agent credit only as
 * its events are taken: `pulledBytes` is then what the host has taken from the guest.
 *
 *   exec ['chunks', N, SIZE]  `started`, N stdout chunks of SIZE bytes (byte i of chunk k is k), exit 0
 *   exec ['cat']              `started`, stdin echoed on stdout, exit 0 after EOF
 *   exec ['sleep']            `started`, then nothing until cancelled (exit 137, cancelled)
 *   exec ['zeros', N, SIZE]   `started`, N fresh zeroed stdout chunks of SIZE bytes (no fill: fast), exit 0
 *   exec ['events', N]        `started`, then N more `started` MSGs (a hostile guest's flood), exit 0
 *   exec ['late']             no `started`: nothing until cancelled
 *   list PATH                 `entries` MSGs of `listing(PATH)`, 1000 a MSG; END ok
 *   read PATH                 `stat`, 3 chunks of 1000 bytes, END bytes 3000
 *   write PATH                takes input; END bytes N after EOF
 */
export class FakeStream implements GuestStream {
  readonly id: number;
  readonly ended: Promise<AgentEnd>;
  readonly input: Uint8Array[] = [];
  readonly resizes: Array<{ rows: number; cols: number }> = [];
  pulledBytes = 0;
  pulledMsgs = 0;
  inputClosed = false;
  cancelled = false;
  #queue: GuestEvent[] = [];
  #wake: (() => void) | undefined;
  #done = false;
  #resolveEnd!: (e: AgentEnd) => void;
  /** Makes the next events when pulled with nothing queued (a script's lazy output). */
  #produce: () => GuestEvent[] | undefined = () => undefined;

  constructor(
    id: number,
    readonly req: GuestRequest,
  ) {
    this.id = id;
    this.ended = new Promise((resolve) => (this.#resolveEnd = resolve));
    this.#script();
  }

  readonly events: AsyncIterable<GuestEvent> = {
    [Symbol.asyncIterator]: () => ({
      next: async (): Promise<IteratorResult<GuestEvent>> => {
        for (;;) {
          if (this.#queue.length === 0 && !this.#done) {
            const more = this.#produce();
            if (more) this.#queue.push(...more);
          }
          const ev = this.#queue.shift();
          if (ev) {
            if (ev.kind === 'data') this.pulledBytes += ev.bytes.length;
            if (ev.kind === 'msg') this.pulledMsgs++;
            if (ev.kind === 'end') this.#done = true;
            return { value: ev, done: false };
          }
          if (this.#done) return { value: undefined, done: true };
          await new Promise<void>((resolve) => (this.#wake = resolve));
        }
      },
    }),
  };

  write(bytes: Uint8Array): Promise<void> {
    if (this.#done || this.#ending) return Promise.reject(new Error('the stream has ended'));
    this.input.push(bytes.slice());
    if (this.req.op === 'exec' && this.req.cmd[0] === 'cat') this.#push({ kind: 'data', channel: 1, bytes: bytes.slice() });
    return Promise.resolve();
  }

  closeInput(): void {
    this.inputClosed = true;
    if (this.req.op === 'exec' && this.req.cmd[0] === 'cat')
      this.end({ ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
    if (this.req.op === 'write') this.end({ ok: true, bytes: this.input.reduce((n, b) => n + b.length, 0) });
  }

  resize(rows: number, cols: number): void {
    this.resizes.push({ rows, cols });
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.end(this.req.op === 'exec' ? { ok: true, exitCode: 137, signal: 'KILL', timedOut: false, cancelled: true } : { ok: true });
  }

  #ending = false;
  /** Queues the END (after what is queued) and stops making output. */
  end(e: AgentEnd): void {
    if (this.#ending) return;
    this.#ending = true;
    this.#produce = () => undefined;
    this.#push({ kind: 'end', end: e });
    this.#resolveEnd(e);
  }

  #push(ev: GuestEvent): void {
    this.#queue.push(ev);
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  #script(): void {
    const r = this.req;
    if (r.op === 'exec') {
      if (r.cmd[0] !== 'late') this.#push({ kind: 'msg', msg: { type: 'started', pid: 4242 } });
      if (r.cmd[0] === 'zeros' || r.cmd[0] === 'events') {
        const n = Number(r.cmd[1]);
        const size = Number(r.cmd[2] ?? 0);
        let k = 0;
        this.#produce = () => {
          if (k++ === n) {
            this.end({ ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
            return undefined;
          }
          return [
            r.cmd[0] === 'zeros'
              ? { kind: 'data', channel: 1, bytes: new Uint8Array(size) }
              : { kind: 'msg', msg: { type: 'started', pid: k } },
          ];
        };
      }
      if (r.cmd[0] === 'chunks') {
        const n = Number(r.cmd[1]);
        const size = Number(r.cmd[2]);
        let k = 0;
        this.#produce = () => {
          if (k === n) {
            this.end({ ok: true, exitCode: 0, signal: null, timedOut: false, cancelled: false });
            return undefined;
          }
          const bytes = new Uint8Array(size).fill(k % 256);
          k++;
          return [{ kind: 'data', channel: k % 5 === 0 ? 2 : 1, bytes }];
        };
      }
    } else if (r.op === 'list') {
      const all = listing(r.path);
      let at = 0;
      this.#produce = () => {
        if (at >= all.length) {
          this.end({ ok: true });
          return undefined;
        }
        at += 1000;
        return [{ kind: 'msg', msg: { type: 'entries', entries: all.slice(at - 1000, at) } }];
      };
    } else if (r.op === 'read') {
      this.#push({ kind: 'msg', msg: { type: 'stat', stat: { type: 'file', size: 3000, mode: 0o644, mtimeMs: 0 } } });
      for (let i = 0; i < 3; i++) this.#push({ kind: 'data', channel: 1, bytes: new Uint8Array(1000).fill(i) });
      this.end({ ok: true, bytes: 3000 });
    }
  }
}

const DIR_STAT = { type: 'dir' as const, size: 4096, mode: 0o755, mtimeMs: 0 };

/** A directory's entries: `/escapes` has 20,000 whose names are 20 control characters (6 bytes each in JSON). */
export function listing(path: string): Array<{ name: string; stat: typeof DIR_STAT }> {
  if (path === '/escapes') return Array.from({ length: 20_000 }, (_, i) => ({ name: `${'\u0001'.repeat(20)}${i}`, stat: DIR_STAT }));
  return [
    { name: 'a', stat: DIR_STAT },
    { name: 'b', stat: DIR_STAT },
  ];
}

const PROCS: GuestProc[] = [{ pid: 7, cmd: ['sleep', '100'], detached: true, pty: false, running: true, exitCode: null, startedAtMs: 1 }];

export class FakeSession implements GuestSession {
  readonly streams: FakeStream[] = [];
  readonly closed: Promise<void>;
  readonly windows: number[] = [];
  /** Every request given to `call`, in order. */
  readonly calls: GuestRequest[] = [];
  /** While set, `stat /slow` waits for it. */
  slow: Promise<void> | undefined;
  #close!: () => void;
  #nextId = 1;
  #isClosed = false;

  constructor() {
    this.closed = new Promise((resolve) => (this.#close = resolve));
  }

  /** How many streams were opened, of an op. */
  opens(op?: GuestRequest['op']): number {
    return this.streams.filter((s) => !op || s.req.op === op).length;
  }

  open(req: GuestRequest, opts: { window?: number } = {}): GuestStream {
    const s = new FakeStream(this.#nextId++, req);
    this.windows.push(opts.window ?? 256 << 10);
    if (this.#isClosed) s.end({ ok: false, code: 'GONE', message: 'the session is closed' });
    this.streams.push(s);
    return s;
  }

  async call(req: GuestRequest): Promise<{ end: AgentEnd; msgs: AgentMsg[] }> {
    const stat = DIR_STAT;
    this.calls.push(req);
    switch (req.op) {
      case 'ps':
        return { end: { ok: true, processes: PROCS }, msgs: [] };
      case 'stat':
        if (req.path === '/slow') await this.slow;
        if (req.path === '/missing') return { end: { ok: false, code: 'NOT_FOUND', message: `${req.path}: no such file` }, msgs: [] };
        return { end: { ok: true, stat }, msgs: [] };
      case 'mkdir':
        if (req.path === '/exists') return { end: { ok: false, code: 'EXISTS', message: `${req.path}: exists` }, msgs: [] };
        return { end: { ok: true }, msgs: [] };
      case 'list':
        return { end: { ok: true }, msgs: [{ type: 'entries', entries: listing(req.path) }] };
      case 'exec':
        // The session's answer lost (the VM went), or the agent's refusal: nothing ran.
        if (req.cmd[0] === 'gone') return { end: { ok: false, code: 'GONE', message: 'the session closed' }, msgs: [] };
        if (req.cmd[0] === 'invalid') return { end: { ok: false, code: 'INVALID', message: 'no such cwd' }, msgs: [] };
        return { end: { ok: true, pid: 5151 }, msgs: [{ type: 'started', pid: 5151 }] };
      default:
        return { end: { ok: true }, msgs: [] };
    }
  }

  async ping(): Promise<void> {}

  async quiesce(): Promise<() => void> {
    return () => undefined;
  }

  close(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    for (const s of this.streams) s.end({ ok: false, code: 'GONE', message: 'the session closed' });
    this.#close();
  }
}
