import type { Msg, Subscription } from '@nats-io/nats-core';
import { CapacityError, ForkyError, silentLogger, type Logger } from '@forky/base';
import type { GuestEvent, GuestRequest, GuestSession, GuestStream } from '@forky/agent';
import { headerOf } from '@forky/bus';
import {
  DEFAULT_STREAM_WINDOW,
  GUEST_UNARY_ENDPOINTS,
  STREAM_HEADERS,
  STREAM_IDLE_MS,
  STREAM_KEEPALIVE_MS,
  subjects,
  type StreamOpenReply,
} from '@forky/contract';
import { Bridge } from './bridge.js';
import type { GuestHandlers, GuestStreamsOptions, OpenSpec } from './endpoints-types.js';

export type { GuestHandlers, GuestStreamsOptions };
import { DEFAULT_STREAM_LIMITS, StreamRegistry, newSid, ranNothing } from './registry.js';
import { endedCheck, fingerprint, withinMs } from './helpers.js';
import { guestError, unary } from './unary.js';

/** One-shot guest calls at once per VM: each holds a guest stream and up to a reply's worth of hostd memory. */
const UNARY_PER_VM = 16;

/**
 * hostd's sandbox endpoints: opens make a Bridge per stream, and one subscription on this
 * host's `stream.>` subjects takes every client's `in`, `credit` and `cancel`.
 */
export class GuestStreams {
  readonly registry: StreamRegistry;
  readonly #o: GuestStreamsOptions;
  readonly #log: Logger;
  #sub: Subscription | undefined;
  readonly #prefix: string;
  #stopping = false;
  /** Opens under way (not yet a Bridge in the registry), for stop to wait out. */
  readonly #opening = new Set<Promise<unknown>>();
  readonly #unaryBusy = new Map<string, number>();

  constructor(o: GuestStreamsOptions) {
    this.#o = o;
    this.#log = (o.log ?? silentLogger()).child({ component: 'streams' });
    this.registry = new StreamRegistry({ ...DEFAULT_STREAM_LIMITS, ...o.limits }, o.work);
    this.#prefix = `${subjects.hostPrefix(o.hostId)}.stream.`;
  }

  /** Listens for clients' stream messages; before any open is served. */
  start(): void {
    this.#sub = this.#o.nc.subscribe(subjects.streamsOf(this.#o.hostId), { callback: (err, msg) => this.#onMessage(err, msg) });
  }

  /** Refuses new opens, cancels every stream (ends go out), waits out opens under way (they refuse), stops listening. */
  async stop(): Promise<void> {
    this.#stopping = true;
    const all = this.registry.all();
    for (const b of all) b.cancel('host');
    await Promise.allSettled([...this.#opening]);
    const late = this.registry.all();
    for (const b of late) b.cancel('host');
    await Promise.all([...all, ...late].map((b) => b.done));
    this.#sub?.unsubscribe();
  }

  #refuseIfStopping(): void {
    if (this.#stopping) throw new ForkyError('UNAVAILABLE', 'this host is stopping: it opens no more streams');
  }

  /** A one-shot call within the VM's limit of calls at once. */
  async #unary(vmId: string, run: (s: GuestSession) => Promise<unknown>): Promise<unknown> {
    this.#refuseIfStopping();
    const n = this.#unaryBusy.get(vmId) ?? 0;
    const max = this.#o.unaryPerVm ?? UNARY_PER_VM;
    if (n >= max) throw new CapacityError(`VM ${vmId} has ${n} guest calls under way, the most it may`);
    this.#unaryBusy.set(vmId, n + 1);
    const endWork = this.registry.work(vmId);
    try {
      return await run(await this.#o.guest(vmId));
    } finally {
      endWork();
      const left = (this.#unaryBusy.get(vmId) ?? 1) - 1;
      if (left > 0) this.#unaryBusy.set(vmId, left);
      else this.#unaryBusy.delete(vmId);
    }
  }

  /** Runs an open, counted while under way so stop can wait for it. */
  #track<T>(p: Promise<T>): Promise<T> {
    this.#opening.add(p);
    void p.finally(() => this.#opening.delete(p)).catch(() => undefined);
    return p;
  }

  handlers(): GuestHandlers {
    const unaryHandlers = Object.fromEntries(
      GUEST_UNARY_ENDPOINTS.map((e) => [
        e,
        (r: { id: string }) => this.#unary(r.id, (s) => (unary[e] as (s: GuestSession, r: unknown) => Promise<unknown>)(s, r)),
      ]),
    ) as unknown as Pick<GuestHandlers, (typeof GUEST_UNARY_ENDPOINTS)[number]>;
    return {
      ...unaryHandlers,
      'exec.start': (r) => {
        const cmd = r.cmd ?? ['/bin/sh', '-c', r.shell as string];
        const req: GuestRequest = {
          op: 'exec',
          cmd,
          env: r.env,
          ...(r.cwd ? { cwd: r.cwd } : {}),
          ...(r.user ? { user: r.user } : {}),
          // A terminal takes its keys on stdin.
          stdin: r.stdin || !!r.pty,
          timeoutMs: r.timeoutMs,
          detach: r.detach,
          ...(r.pty ? { pty: r.pty } : {}),
        };
        const open = (sent: () => void = () => undefined): Promise<StreamOpenReply> =>
          r.detach
            ? this.#detached(r.id, req, sent)
            : this.#open({
                vmId: r.id,
                req,
                window: r.window,
                takesInput: req.stdin === true,
                bytes: 'process',
                awaitPid: true,
                pty: !!r.pty,
              });
        return r.key ? this.registry.keyed(r.key, fingerprint(r), open) : open();
      },
      'proc.attach': (r) =>
        this.#open({
          vmId: r.id,
          req: { op: 'attach', pid: r.pid, follow: r.follow },
          window: r.window,
          takesInput: false,
          bytes: 'process',
          awaitPid: false,
        }).then((reply) => ({ ...reply, pid: r.pid })),
      'file.read': (r) =>
        this.#open({
          vmId: r.id,
          req: { op: 'read', path: r.path, offset: r.offset, ...(r.length === undefined ? {} : { length: r.length }) },
          window: r.window,
          takesInput: false,
          bytes: 'file',
          awaitPid: false,
        }),
      'file.write': (r) => {
        const req: GuestRequest = {
          op: 'write',
          path: r.path,
          mode: r.mode,
          parents: r.parents,
          ...(r.perm === undefined ? {} : { perm: r.perm }),
        };
        const open = (): Promise<StreamOpenReply> =>
          this.#open({ vmId: r.id, req, window: r.window, takesInput: true, bytes: 'file', awaitPid: false });
        return r.key ? this.registry.keyed(r.key, fingerprint(r), open) : open();
      },
      'port.open': (r) => {
        const open = (): Promise<StreamOpenReply> =>
          this.#open({
            vmId: r.id,
            req: { op: 'tcp', port: r.port },
            window: r.window,
            takesInput: true,
            bytes: 'file',
            awaitPid: false,
            port: true,
          });
        return r.key ? this.registry.keyed(r.key, fingerprint(r), open) : open();
      },
      'file.watch': (r) =>
        this.#open({
          vmId: r.id,
          req: { op: 'watch', path: r.path, recursive: r.recursive },
          window: r.window,
          takesInput: false,
          bytes: 'file',
          awaitPid: false,
        }),
    };
  }

  #detached(vmId: string, req: GuestRequest, sent: () => void): Promise<StreamOpenReply> {
    return this.#track(this.#detachedNow(vmId, req, sent));
  }

  async #detachedNow(vmId: string, req: GuestRequest, sent: () => void): Promise<StreamOpenReply> {
    this.#refuseIfStopping();
    // Its start is work; the process it leaves running is not (nothing is seen of it).
    const endWork = this.registry.work(vmId);
    const { end } = await this.#o
      .guest(vmId)
      .then((session) => {
        // From here the OPEN may reach the guest, and a detached process outlives any answer lost.
        sent();
        return session.call(req, this.#o.startedWaitMs ?? 30_000);
      })
      .finally(endWork);
    // The agent's own refusal ran nothing; GONE and PROTOCOL are the host's: it may have run.
    if (!end.ok) throw end.code === 'GONE' || end.code === 'PROTOCOL' ? guestError(end, 'exec') : ranNothing(guestError(end, 'exec'));
    if (end.pid === undefined) throw new ForkyError('INTERNAL', 'the guest started a detached process without saying its pid');
    return { pid: end.pid };
  }

  #open(s: OpenSpec): Promise<StreamOpenReply> {
    return this.#track(this.#openNow(s));
  }

  async #openNow(s: OpenSpec): Promise<StreamOpenReply> {
    this.#refuseIfStopping();
    const release = this.registry.reserve(s.vmId, s.port ? 'port' : 'stream');
    let stream: GuestStream | undefined;
    try {
      const session = await this.#o.guest(s.vmId);
      stream = session.open(s.req, { window: s.window ?? DEFAULT_STREAM_WINDOW });
      const events = stream.events[Symbol.asyncIterator]();
      let first: Promise<IteratorResult<GuestEvent>> | undefined;
      let pid: number | undefined;
      if (s.awaitPid) {
        first = events.next();
        const r = await withinMs(first, this.#o.startedWaitMs ?? 10_000);
        if (r && !r.done && r.value.kind === 'msg' && r.value.msg.type === 'started') pid = r.value.msg.pid;
      }
      // Stop began while the pid was awaited: no bridge may outlive the subscription.
      this.#refuseIfStopping();
      const sid = newSid();
      const bridge = new Bridge({
        nc: this.#o.nc,
        hostId: this.#o.hostId,
        sid,
        vmId: s.vmId,
        stream,
        events,
        ...(first ? { first } : {}),
        takesInput: s.takesInput,
        inWindow: DEFAULT_STREAM_WINDOW,
        bytes: s.bytes,
        pty: s.pty ?? false,
        sessionEnded: endedCheck(session),
        eofOut: s.port ?? false,
        ...(this.#o.startIdleMs === undefined ? {} : { startIdleMs: this.#o.startIdleMs }),
        idleMs: this.#o.idleMs ?? STREAM_IDLE_MS,
        keepaliveMs: this.#o.keepaliveMs ?? STREAM_KEEPALIVE_MS,
        cancelGraceMs: this.#o.cancelGraceMs ?? 10_000,
        ...(this.#o.onActivity ? { onActivity: this.#o.onActivity } : {}),
        log: this.#log,
      });
      this.registry.add(bridge, release);
      const h = this.#o.hostId;
      const stream_ = {
        sid,
        host: h,
        out: subjects.streamOut(h, sid),
        in: subjects.streamIn(h, sid),
        credit: subjects.streamCredit(h, sid),
        cancel: subjects.streamCancel(h, sid),
      };
      return { stream: stream_, ...(pid === undefined ? {} : { pid }) };
    } catch (e) {
      stream?.cancel();
      release();
      throw e;
    }
  }

  #onMessage(err: Error | null, msg: Msg): void {
    if (err) {
      this.#log.error({ err }, 'stream subscription closed');
      return;
    }
    if (!msg.subject.startsWith(this.#prefix)) return;
    const [sid, what, ...rest] = msg.subject.slice(this.#prefix.length).split('.');
    const bridge = sid && rest.length === 0 ? this.registry.get(sid) : undefined;
    if (!bridge) return; // an ended or unknown stream: nothing to tell, nobody to tell it to
    try {
      if (what === 'credit') {
        const body = msg.data.length ? (JSON.parse(new TextDecoder().decode(msg.data)) as { bytes?: unknown }) : { bytes: 0 };
        const bytes = Number.isSafeInteger(body.bytes) && (body.bytes as number) >= 0 ? (body.bytes as number) : 0;
        bridge.onCredit(Math.min(bytes, 1 << 30));
      } else if (what === 'in') {
        bridge.onIn(Number(headerOf(msg, STREAM_HEADERS.seq)), headerOf(msg, STREAM_HEADERS.kind), msg.data);
      } else if (what === 'cancel') bridge.cancel('client');
    } catch {
      // A body or header that cannot be read: the client is broken, its stream is not worth keeping.
      bridge.cancel('host');
    }
  }
}
