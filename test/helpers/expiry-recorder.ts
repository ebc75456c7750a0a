import { withDeadline } from '@forky/base';
import { VmEvent } from '@forky/contract';

/** How soon after its retention an unused snapshot must be gone (the engine tests' bound). */
export const EXPIRES_WITHIN_MS = 3000;

/** An event sink that keeps every event (each checked against the contract); `expired(id)` waits for one naming a snapshot. */
export function expiryRecorder() {
  const events: VmEvent[] = [];
  const waiting = new Map<string, (e: VmEvent) => void>();
  return {
    events,
    publish(e: VmEvent): void {
      events.push(VmEvent.parse(e));
      if (e.kind === 'expired' && e.snapshot) waiting.get(e.snapshot)?.(e);
    },
    expired(id: string, ms = EXPIRES_WITHIN_MS): Promise<VmEvent> {
      const seen = events.find((e) => e.kind === 'expired' && e.snapshot === id);
      if (seen) return Promise.resolve(seen);
      return withDeadline(new Promise<VmEvent>((resolve) => waiting.set(id, resolve)), ms, `the expiry of ${id}`);
    },
    saidOf: (id: string) => events.some((e) => e.kind === 'expired' && e.snapshot === id),
  };
}
