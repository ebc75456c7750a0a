import { ForkyError, asForkyError, delay } from '@forky/base';

/** How long a VM may take to come back from a snapshot before what followed it is given up. */
export const HAND_OVER_MS = 120_000;
/** Codes an open meets while the VM is still being handed over: worth another try. */
const PASSING = new Set(['INVALID_STATE', 'UNAVAILABLE', 'CAPACITY']);
const RETRY_MS = 250;
/** A stream that ended this soon after its open, GONE, counts as one hand-over with the one before. */
export const SHORT_LIVED_MS = 1000;

/**
 * Opens `open` again once a snapshot has handed the VM to a new QEMU process (its streams ended
 * GONE): tried every 250 ms while the cluster says the VM is not back yet, until `deadline` or
 * the signal's abort.
 */
export async function reopen<T>(open: () => Promise<T>, deadline = Date.now() + HAND_OVER_MS, signal?: AbortSignal): Promise<T> {
  for (;;) {
    try {
      return await open();
    } catch (e) {
      // Given up by its caller: its reason, whatever its code, is not the VM still coming back.
      signal?.throwIfAborted();
      const err = asForkyError(e);
      if (!PASSING.has(err.code) || Date.now() > deadline) throw err;
      await delay(RETRY_MS, signal);
    }
  }
}

/**
 * The hand-overs one watch or process follows. Streams that end GONE soon after their open (the
 * VM not back yet, or a host that keeps saying so) share one deadline and are opened again at
 * most every 250 ms: however often GONE comes, it is a bounded loop, never a spin.
 */
export class HandOvers {
  #since: number | undefined;
  #openedAt = Date.now();

  /** The stream that ended GONE opened again: past the deadline, UNAVAILABLE instead. */
  async reopen<T>(open: () => Promise<T>, what: string, signal?: AbortSignal): Promise<T> {
    const shortLived = Date.now() - this.#openedAt < SHORT_LIVED_MS;
    if (!shortLived) this.#since = undefined;
    this.#since ??= Date.now();
    const deadline = this.#since + HAND_OVER_MS;
    if (shortLived) await delay(RETRY_MS, signal);
    // Checked before each open, not only when one fails: an open that works but ends GONE at once counts.
    if (Date.now() > deadline)
      throw new ForkyError('UNAVAILABLE', `${what}: the VM did not come back within ${HAND_OVER_MS} ms of a snapshot`);
    const st = await reopen(open, deadline, signal);
    this.#openedAt = Date.now();
    return st;
  }
}
