import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from '@forky/base';
import { VmEvent, subjects } from '@forky/contract';
import type { EventSink } from '../domain/ports.js';

/** What the sink has done with the events it was given, for logs and tests. */
export interface EventCounts {
  sent: number;
  /** Not sent: the connection was down (nats.js would buffer them without bound until it is back). */
  dropped: number;
  /** Not sent: the body did not match the contract (a bug here, never the subscriber's problem). */
  invalid: number;
}

/**
 * Events as core NATS messages, JSON, fire and forget (STREAMS.md "Events"): nobody acknowledges
 * them and nothing is kept. While the connection is down an event is dropped and counted rather
 * than queued, so a long outage costs events, never memory.
 */
export class NatsEventSink implements EventSink {
  readonly #counts: EventCounts = { sent: 0, dropped: 0, invalid: 0 };
  #up = true;

  constructor(
    private readonly nc: NatsConnection,
    private readonly hostId: string,
    private readonly log: Logger,
  ) {
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect' || s.type === 'reconnecting') this.#up = false;
        else if (s.type === 'reconnect') this.#up = true;
      }
    })().catch(() => undefined);
    void nc.closed().then(() => (this.#up = false));
  }

  get counts(): Readonly<EventCounts> {
    return { ...this.#counts };
  }

  publish(e: VmEvent): void {
    if (!this.#up || this.nc.isClosed() || this.nc.isDraining()) {
      if (this.#counts.dropped++ % 100 === 0)
        this.log.warn({ dropped: this.#counts.dropped, kind: e.kind }, 'NATS is down: events dropped');
      return;
    }
    const body = VmEvent.safeParse(e);
    if (!body.success) {
      this.#counts.invalid++;
      this.log.error({ kind: e.kind, vm: e.vm, issues: body.error.issues.slice(0, 3) }, 'event does not match the contract; not sent');
      return;
    }
    try {
      this.nc.publish(subjects.event(this.hostId, body.data.kind), JSON.stringify(body.data));
      this.#counts.sent++;
    } catch (err) {
      // Closed between the check and the call, or over max_payload: an event is not worth more.
      this.#counts.dropped++;
      this.log.warn({ err, kind: e.kind }, 'event not published');
    }
  }
}
