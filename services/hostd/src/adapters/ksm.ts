import fs from 'node:fs/promises';
import type { Logger } from '@forky/base';

const KSM = '/sys/kernel/mm/ksm';

export interface KsmOptions {
  enabled: boolean;
  pagesToScan: number;
  sleepMs: number;
}

/**
 * Turns kernel same-page merging on where the host allows it (root, and a kernel with KSM).
 * QEMU marks guest RAM mergeable by default (`mem-merge`); the pages children made their own
 * and that happen to be equal (zeroed pages, the same files read) are merged. What it saves is
 * reported in heartbeats (`ksmSavedMiB`). Returns why it is off, if it is.
 */
export async function enableKsm(opts: KsmOptions, log: Logger): Promise<string | undefined> {
  if (!opts.enabled) return 'disabled by configuration';
  try {
    await fs.writeFile(`${KSM}/pages_to_scan`, String(opts.pagesToScan));
    await fs.writeFile(`${KSM}/sleep_millisecs`, String(opts.sleepMs));
    await fs.writeFile(`${KSM}/run`, '1');
    log.info({ pagesToScan: opts.pagesToScan, sleepMs: opts.sleepMs }, 'KSM on');
    return undefined;
  } catch (e) {
    const why = `KSM not available here: ${(e as Error).message}`;
    log.warn(why);
    return why;
  }
}
