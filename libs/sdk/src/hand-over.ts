import { asForkyError, delay } from '@forky/base';

/** How long a VM may take to come back from a snapshot before what followed it is given up. */
export const HAND_OVER_MS = 120_000;
/** Codes an open meets while the VM is still being handed over: worth another try. */
const PASSING = new Set(['INVALID_STATE', 'UNAVAILABLE', 'CAPACITY']);
const RETRY_MS = 250;

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
