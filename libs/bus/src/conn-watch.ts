import type { NatsConnection } from '@nats-io/nats-core';

/** Per connection, one watch for its live streams (messages sent while disconnected are lost): it holds no stopped stream. */
export const watched = new WeakMap<NatsConnection, Set<(why: string) => void>>();
export function watchConnection(nc: NatsConnection, onLost: (why: string) => void): void {
  if (watched.get(nc)?.add(onLost)) return;
  const live = new Set([onLost]);
  watched.set(nc, live);
  const tell = (why: string): void => [...live].forEach((f) => f(why));
  void (async () => {
    for await (const st of nc.status()) if (st.type === 'disconnect') tell('the NATS connection was lost');
  })();
  void nc.closed().then(() => (watched.delete(nc), tell('the NATS connection closed')));
}
