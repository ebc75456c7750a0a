import type { NatsConnection } from '@nats-io/nats-core';
import { ForkyError, ValidationError } from '@forky/base';
import { request } from '@forky/bus';
import { HOSTD_ENDPOINTS, HostId, SCHED_ENDPOINTS, SUBJECT_ROOT } from '@forky/contract';

/** Nothing will answer a request on this subject: said at once, not after the request's deadline. */
export class NoRespondersError extends ForkyError {
  override readonly name = 'NoRespondersError';
  constructor(subject: string, why: string, cause?: unknown) {
    super('UNAVAILABLE', `no responders: nothing serves requests on ${subject}${why}`, { cause, details: { subject } });
  }
}

const sched = new Set<string>(SCHED_ENDPOINTS);
const hostd = new Set<string>(HOSTD_ENDPOINTS);

/** A subject of the Forky API that a service answers: forky.v1.sched.<endpoint> or forky.v1.host.<host>.<endpoint>. */
function isRequestSubject(subject: string): boolean {
  const rest = subject.slice(SUBJECT_ROOT.length + 1);
  if (rest.startsWith('sched.')) return sched.has(rest.slice('sched.'.length));
  const m = /^host\.([^.]+)\.(.+)$/.exec(rest);
  return !!m && HostId.safeParse(m[1]).success && hostd.has(m[2] as string);
}

const isNoResponders = (e: unknown): boolean => {
  for (let c = e as { name?: string; message?: string; cause?: unknown } | undefined, i = 0; c && i < 5; c = c.cause as typeof c, i++) {
    if (c.name === 'NoRespondersError' || /no responders/i.test(c.message ?? '')) return true;
  }
  return false;
};

/**
 * `forky req`: one JSON request to any subject. nats-server reports "no responders" only when
 * nobody subscribes; under forky.v1 some subjects are listened to but never answered (the
 * scheduler subscribes to heartbeats, forky.v1.hb.*), and a request there would wait out its
 * whole deadline (600 s by default). Those are refused at once, by the contract's subject list.
 */
export async function rawRequest(nc: NatsConnection, subject: string, body: unknown, timeoutMs: number): Promise<unknown> {
  // One literal subject: no space or control character, no empty token, no wildcard.
  if (!/^[^\s\p{C}]+$/u.test(subject) || subject.split('.').some((t) => t === '' || t === '*' || t === '>')) {
    throw new ValidationError(`${JSON.stringify(subject)} is not a subject one can send a request to`, { field: 'subject' });
  }
  if (subject.startsWith(`${SUBJECT_ROOT}.`) && !isRequestSubject(subject)) {
    throw new NoRespondersError(
      subject,
      ` (not a request subject of the Forky API: ${SUBJECT_ROOT}.sched.<endpoint>, ${SUBJECT_ROOT}.host.<host>.<endpoint>)`,
    );
  }
  try {
    return await request(nc, subject, body, { format: 'json', timeoutMs });
  } catch (e) {
    if (e instanceof ForkyError && e.code === 'UNAVAILABLE' && isNoResponders(e))
      throw new NoRespondersError(subject, ' (no service subscribes to it)', e);
    throw e;
  }
}
