import { asForkyError } from '@forky/base';
import { SELF_FORK_LINE_MAX, SelfForkId, SelfForkRequest, parseOrThrow, type SelfForkReply } from '@forky/contract';
import type { Host } from './host.js';
import type { EventSink, SelfForkLine } from './ports.js';
import { SelfForkRefusal } from './self-fork-tree.js';

/** Bytes of a reply's message (the protocol's bound). */
const MESSAGE_MAX = 1024;

/** A request line, or BAD_REQUEST naming what is wrong with it. */
export function parseLine(l: SelfForkLine): SelfForkRequest {
  if (!('line' in l)) throw new SelfForkRefusal('BAD_REQUEST', `a request is one line of at most ${SELF_FORK_LINE_MAX} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(l.line);
  } catch {
    throw new SelfForkRefusal('BAD_REQUEST', 'a request is one JSON object per line');
  }
  try {
    return parseOrThrow(SelfForkRequest, v, 'self-fork request');
  } catch (e) {
    throw new SelfForkRefusal('BAD_REQUEST', asForkyError(e).message, { cause: e });
  }
}

/** The line's request, or the refusal saying what is wrong with it (thrown later, in its turn). */
export function parsedOrRefusal(l: SelfForkLine): SelfForkRequest | SelfForkRefusal {
  try {
    return parseLine(l);
  } catch (e) {
    return e as SelfForkRefusal;
  }
}

/** The id of a reply to a line that names none a reader could be waiting for. */
export const NO_ID = '0000000000000000';

/** The request id of a line, read before anything else is checked (so even a refusal is told to its caller). */
export function lineId(l: SelfForkLine): string {
  if (!('line' in l)) return NO_ID;
  try {
    const v = (JSON.parse(l.line) as { id?: unknown } | null)?.id;
    return SelfForkId.safeParse(v).success ? (v as string) : NO_ID;
  } catch {
    return NO_ID;
  }
}

export function lostReply(id: string, why: string): SelfForkReply {
  return { v: 1, id, ok: false, code: 'UNAVAILABLE', message: `${why}: the request was lost; try again` };
}

export function refusal(id: string, e: unknown): SelfForkReply {
  const { code, message } = e instanceof SelfForkRefusal ? e : asForkyError(e);
  return { v: 1, id, ok: false, code, message: message.length > MESSAGE_MAX ? `${message.slice(0, MESSAGE_MAX - 1)}…` : message };
}

/** The engine's events, with each VM's end (destroyed, failed) also told to `ended`, and each fork's children to `forked`. */
export function withSelfForkEvents<D extends { events?: EventSink }>(
  d: D,
  ended: (vm: string, how: string) => void,
  forked: (children: readonly string[], source?: string) => void,
): D {
  const inner = d.events;
  return {
    ...d,
    events: {
      publish(e) {
        inner?.publish(e);
        // A sink never throws: a waiter's bookkeeping failing must not fail the operation that told it.
        try {
          if (e.vm && (e.kind === 'destroyed' || e.kind === 'failed')) ended(e.vm, e.kind);
          if (e.kind === 'forked' && e.children) forked(e.children, e.vm);
        } catch {
          /* nothing to undo */
        }
      },
    },
  };
}

/** What `forky-fork` leaves in a child for scripts (its index, its VM id): wrong in a copy made from outside. */
const FORK_FILE = '/run/forky/fork';
const DROP_FORK_FILE_MS = 10_000;

/** A child of an outside fork (or snapshot) of a VM with a policy: the root of a tree of its own, no parent. */
export function outsideCopy(host: Host, id: string): boolean {
  const sf = host.vms.get(id)?.selfFork;
  return sf !== undefined && sf.parent === undefined && sf.depth === 0;
}

/** Removes FORK_FILE in the VM's guest (one exec); a failure is logged, not thrown (the fork stands). */
export async function dropForkFile(host: Host, id: string): Promise<void> {
  const h = host.vms.get(id)?.handle;
  if (!h) return;
  const r = await host.runtime
    .exec(h, ['/bin/sh', '-c', `rm -f ${FORK_FILE}`], { timeoutMs: DROP_FORK_FILE_MS })
    .catch((err: unknown) => ({ exitCode: -1, stderr: asForkyError(err).message }));
  if (r.exitCode !== 0) host.log.warn({ vm: id, exit: r.exitCode, stderr: r.stderr }, `self-fork: ${FORK_FILE} not removed`);
}
