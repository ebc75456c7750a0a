import { ForkyError } from '@forky/base';
import { guestText } from './guest-text.js';

/**
 * An error for people: what went wrong and what to do (the exit code says which kind). The message
 * is escaped: it may carry what a guest said (an agent's end message, a guest tar's stderr).
 * Apart from output.ts so that a run that fails nowhere never loads @forky/base (zod, pino).
 */
export function describeError(e: unknown): string {
  const fe = e instanceof ForkyError ? e : undefined;
  // A guest agent's own code (IO, EXISTS…) already leads the message: said once, not under ours too.
  const guest = fe?.details?.guestCode;
  const own = fe && typeof guest === 'string' && guest !== fe.code && fe.message.startsWith(`${guest}: `);
  const msg = fe ? (own ? fe.message : `${fe.code}: ${fe.message}`) : e instanceof Error ? e.message : String(e);
  const hint = fe?.code === 'UNAVAILABLE' ? '\nhint: is the cluster up? `forky up --detach`, or pass --server / FORKY_SERVER' : '';
  return `forky: ${guestText(msg)}${hint}\n`;
}

/** A failed command's exit code: 2 for bad input, 1 otherwise. */
export const failureExitCode = (e: unknown): number => (e instanceof ForkyError && e.code === 'BAD_REQUEST' ? 2 : 1);
