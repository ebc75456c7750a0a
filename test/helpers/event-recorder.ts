import { withDeadline } from '@forky/base';
import { VmEvent } from '@forky/contract';

/** An engine's event sink that keeps what it is given (each checked against the contract), with when it came. */
export interface EventRecorder {
  events: Array<VmEvent & { seenAt: number }>;
  publish(e: VmEvent): void;
  /** The kinds said of VM `vm`, in order. */
  of(vm: string): string[];
  /** The first event (already seen or to come) that matches, within `ms`. */
  until(pred: (e: VmEvent) => boolean, ms?: number): Promise<VmEvent & { seenAt: number }>;
}

export function eventRecorder(): EventRecorder {
  const events: Array<VmEvent & { seenAt: number }> = [];
  const waiting = new Set<{ pred: (e: VmEvent) => boolean; resolve: (e: VmEvent & { seenAt: number }) => void }>();
  return {
    events,
    publish(e) {
      const seen = { ...VmEvent.parse(e), seenAt: Date.now() };
      events.push(seen);
      for (const w of waiting) {
        if (!w.pred(seen)) continue;
        waiting.delete(w);
        w.resolve(seen);
      }
    },
    of: (vm) => events.filter((e) => e.vm === vm).map((e) => e.kind),
    until(pred, ms = 5000) {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      let w!: { pred: (e: VmEvent) => boolean; resolve: (e: VmEvent & { seenAt: number }) => void };
      const p = new Promise<VmEvent & { seenAt: number }>((resolve) => waiting.add((w = { pred, resolve })));
      return withDeadline(p, ms, 'the event').finally(() => waiting.delete(w));
    },
  };
}
