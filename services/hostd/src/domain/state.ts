import { InvalidStateError } from '@forky/base';
import type { VmState } from '@forky/contract';

/** The operations a request can ask of a VM, and the states that allow each. */
export type VmOp = 'pause' | 'resume' | 'snapshot' | 'exec' | 'app' | 'destroy';

const ALLOWED: Record<VmOp, readonly VmState[]> = {
  pause: ['running'],
  resume: ['paused'],
  snapshot: ['running', 'paused'],
  exec: ['running'],
  // The guest mounts the layer itself, so it must run.
  app: ['running'],
  destroy: ['booting', 'restoring', 'running', 'paused', 'snapshotting', 'failed'],
};

/** Every legal transition; anything else is a bug, caught here rather than in a VM's files. */
const TRANSITIONS: Record<VmState, readonly VmState[]> = {
  booting: ['running', 'failed', 'destroying'],
  restoring: ['running', 'failed', 'destroying'],
  running: ['paused', 'snapshotting', 'destroying', 'failed'],
  paused: ['running', 'snapshotting', 'destroying', 'failed'],
  snapshotting: ['running', 'paused', 'failed', 'destroying'],
  destroying: ['destroyed', 'failed'],
  destroyed: [],
  failed: ['destroying'],
  lost: [],
};

export function assertAllowed(id: string, state: VmState, op: VmOp): void {
  if (!ALLOWED[op].includes(state)) {
    throw new InvalidStateError(`cannot ${op} VM ${id}: it is ${state} (${op} needs ${ALLOWED[op].join(' or ')})`, {
      id,
      state,
      op,
    });
  }
}

export function assertTransition(id: string, from: VmState, to: VmState): void {
  if (!TRANSITIONS[from].includes(to)) {
    throw new InvalidStateError(`VM ${id}: illegal transition ${from} -> ${to}`, { id, from, to });
  }
}
