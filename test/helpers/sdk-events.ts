import type { Forky, Labels } from '@forky/sdk';
import { eventRecorder, type EventRecorder } from './event-recorder.js';

/**
 * The cluster's events with these labels (all of them without) through the SDK, kept as they come
 * in an EventRecorder: a test waits for the one it needs, with a deadline, instead of polling.
 */
export function sdkEvents(forky: Forky, labels?: Labels): EventRecorder & { ready(): Promise<void>; close(): Promise<void> } {
  const ac = new AbortController();
  const stream = forky.events({ ...(labels ? { labels } : {}), signal: ac.signal });
  const rec = eventRecorder();
  const loop = (async () => {
    for await (const e of stream) rec.publish(e);
  })();
  return Object.assign(rec, {
    ready: () => stream.ready(),
    close: async (): Promise<void> => {
      ac.abort();
      await loop;
    },
  });
}
