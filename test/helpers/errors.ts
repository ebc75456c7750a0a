import assert from 'node:assert/strict';
import { ForkyError } from '@forky/base';

/** The typed error a call failed with; fails the test if the call succeeded or threw something else. */
export async function refused(p: Promise<unknown>): Promise<ForkyError> {
  const e = await p.then(
    () => assert.fail('the call succeeded'),
    (err: unknown) => err,
  );
  assert.ok(e instanceof ForkyError, String(e));
  return e;
}
