import type { Logger } from '@forky/base';
import {
  EVENT_REASON_MAX_BYTES,
  truncateUtf8,
  type EventKind,
  type Labels,
  type SnapshotInfo,
  type VmEvent,
  type VmInfo,
  type VmState,
} from '@forky/contract';
import type { EventSink } from './ports.js';
import type { VmRecord } from './records.js';

export const NO_EVENTS: EventSink = { publish: () => undefined };

/** The kind a settled state change is; `was` is the state before any snapshot in between. */
function kindOf(was: VmState, to: VmState): EventKind | undefined {
  if (to === 'running') return was === 'booting' || was === 'restoring' ? 'ready' : was === 'paused' ? 'resumed' : undefined;
  if (to === 'paused') return was === 'running' ? 'paused' : undefined;
  return to === 'failed' ? 'failed' : undefined;
}

/**
 * Turns what happens to the host's records into events, so that operations need not each say so:
 * a record made by `Host.newRecord` is `created` when first persisted, state changes map to kinds
 * in `state`, and a VM leaving the table is `destroyed` (or `failed`, if it was undone on the way).
 */
export class VmEvents {
  /** Records made but not yet persisted: nothing was said of them, so nothing is said when they go. */
  readonly #fresh = new WeakSet<VmRecord>();
  /** A VM's state when its snapshot began: whether the snapshot's end paused or resumed it. */
  readonly #before = new WeakMap<VmRecord, VmState>();

  constructor(
    private readonly sink: EventSink,
    private readonly hostId: string,
    private readonly log: Logger,
  ) {}

  made(rec: VmRecord): void {
    this.#fresh.add(rec);
  }

  persisted(rec: VmRecord): void {
    if (this.#fresh.delete(rec)) this.#vm('created', rec);
  }

  state(rec: VmRecord, from: VmState, to: VmState): void {
    if (from === to) return;
    if (to === 'snapshotting') {
      this.#before.set(rec, from);
      return;
    }
    const was = from === 'snapshotting' ? (this.#before.get(rec) ?? from) : from;
    const kind = kindOf(was, to);
    if (kind) this.#vm(kind, rec);
  }

  /** Its process died (`markFailed`); the record stays until it is destroyed. */
  failed(rec: VmRecord): void {
    this.#vm('failed', rec);
  }

  /** Its TTL passed (`reason: idle`: its idle rule's time did); its destroy follows. */
  expired(rec: VmRecord, reason?: 'idle'): void {
    this.#vm('expired', rec, reason);
  }

  /** The VM left the host's table: destroyed, or a boot or restore undone before it ran. */
  gone(rec: VmRecord): void {
    if (this.#fresh.has(rec)) return;
    if (rec.state === 'destroyed') return this.#vm('destroyed', rec);
    const what = rec.parentSnapshot ? `its restore from ${rec.parentSnapshot}` : 'its boot';
    this.#vm('failed', rec, rec.failure?.reason ?? `${what} failed and what was made for it was undone`);
  }

  snapshot(info: SnapshotInfo): void {
    this.#emit({
      ...this.#base('snapshot'),
      vm: info.vm,
      snapshot: info.id,
      image: info.image,
      ...(info.parentSnapshot ? { parent: info.parentSnapshot } : {}),
      ...labelsOf(info),
    });
  }

  /** Deleted by the host's retention (retention.ts). No `vm`: the VM it was taken of did not expire. */
  snapshotExpired(info: SnapshotInfo): void {
    this.#emit({
      ...this.#base('expired'),
      snapshot: info.id,
      image: info.image,
      ...(info.parentSnapshot ? { parent: info.parentSnapshot } : {}),
      ...labelsOf(info),
    });
  }

  /** `reason`: who asked, when not a client (`self-fork`: the source VM's guest). */
  forked(snap: SnapshotInfo, children: ReadonlyArray<{ id: string }>, source?: VmRecord, reason?: string): void {
    this.#emit({
      ...this.#base('forked'),
      ...(reason ? { reason } : {}),
      ...(source ? { vm: source.id, state: source.state } : {}),
      snapshot: snap.id,
      image: snap.image,
      children: children.map((c) => c.id),
      ...labelsOf(source ?? snap),
    });
  }

  #vm(kind: EventKind, rec: VmRecord, reason?: string): void {
    // A failure says why; a pause by the VM's idle rule says so (`idle`), as does an expiry by it.
    const why = kind === 'failed' ? (reason ?? rec.failure?.reason) : kind === 'paused' ? rec.pausedBy : reason;
    this.#emit({
      ...this.#base(kind),
      vm: rec.id,
      state: rec.state,
      image: rec.image,
      ...(rec.parentSnapshot ? { parent: rec.parentSnapshot } : {}),
      ...labelsOf(rec),
      ...(why ? { reason: truncateUtf8(why, EVENT_REASON_MAX_BYTES) } : {}),
    });
  }

  #base(kind: EventKind): Pick<VmEvent, 'v' | 'kind' | 'at' | 'host'> {
    return { v: 1, kind, at: new Date().toISOString(), host: this.hostId };
  }

  #emit(e: VmEvent): void {
    // An event is never worth an operation: a sink that breaks its promise not to throw is logged.
    try {
      this.sink.publish(e);
    } catch (err) {
      this.log.warn({ err, kind: e.kind, vm: e.vm }, 'event sink threw');
    }
  }
}

const labelsOf = (r: { labels?: Labels }): { labels?: Labels } =>
  r.labels && Object.keys(r.labels).length > 0 ? { labels: r.labels } : {};

/** A VM whose QEMU died while hostd was down (recovery.ts keeps it as failed): said once hostd is back. */
export function failedWhileDown(hostId: string, info: VmInfo): VmEvent {
  const reason = info.failure?.reason ?? 'its QEMU process was gone when hostd restarted';
  return {
    v: 1,
    kind: 'failed',
    at: info.failure?.at ?? new Date().toISOString(),
    host: hostId,
    vm: info.id,
    state: info.state,
    image: info.image,
    ...(info.parentSnapshot ? { parent: info.parentSnapshot } : {}),
    ...labelsOf(info),
    reason: truncateUtf8(reason, EVENT_REASON_MAX_BYTES),
  };
}

/** The host's VMs by id; every VM that leaves is told to `onGone` (destroyed, or undone), once. */
export class VmTable extends Map<string, VmRecord> {
  constructor(private readonly onGone: (rec: VmRecord) => void) {
    super();
  }

  override delete(id: string): boolean {
    const rec = this.get(id);
    const had = super.delete(id);
    if (rec) this.onGone(rec);
    return had;
  }
}
