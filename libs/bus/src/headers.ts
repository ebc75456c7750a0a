import { headers, type MsgHdrs } from '@nats-io/nats-core';
import { ValidationError } from '@forky/base';
import { headerText } from '@forky/contract';

/**
 * Sets a header to `value` made one safe line (headerText): the client throws on CR or LF in a
 * value, and a value often carries text from a request or a remote error. Every header set in
 * this repo goes through here.
 */
export function setHeader(h: MsgHdrs, name: string, value: unknown): void {
  h.set(name, headerText(value));
}

/** A header set from `values`, each made one safe line. */
export function safeHeaders(values: Readonly<Record<string, unknown>>): MsgHdrs {
  const h = headers();
  for (const [name, value] of Object.entries(values)) setHeader(h, name, value);
  return h;
}

/**
 * One header of a received message, or undefined. The client parses headers when first asked,
 * and throws on a name it finds invalid (a raw publisher may send any bytes): that is the
 * sender's fault, so a BAD_REQUEST.
 */
export function headerOf(msg: { readonly headers?: MsgHdrs | undefined }, name: string): string | undefined {
  let h: MsgHdrs | undefined;
  try {
    h = msg.headers;
  } catch (e) {
    throw new ValidationError(`the request's headers cannot be parsed: ${headerText((e as Error)?.message, 160)}`, { field: '(headers)' });
  }
  return h?.get(name) || undefined;
}
