import fs from 'node:fs/promises';
import { ForkyError } from '@forky/base';
import type { Egress } from '@forky/contract';
import type { NetworkFilter } from '../../domain/ports.js';

/**
 * No filter on this host: QEMU gives its VMs no network at all (user-mode `restrict=on`), so the
 * only policy it can honour is `none`.
 */
export class RestrictFilter implements NetworkFilter {
  readonly enforcement = 'qemu-restrict' as const;

  /** `reason`: why the host has no nftables filter (said to a caller asking for more than `none`). */
  constructor(readonly reason: string) {}

  apply(_vmId: string, egress: Egress): Promise<void> {
    if (egress === 'none') return Promise.resolve();
    const kind = typeof egress === 'string' ? egress : 'allow';
    return Promise.reject(
      new ForkyError('BAD_REQUEST', `egress "${kind}" needs the host's nftables filter, which this host lacks: ${this.reason}`, {
        details: { field: 'network.egress' },
      }),
    );
  }

  scope(): undefined {
    return undefined;
  }

  /** A QEMU of this host has `restrict=on` on its command line; one started otherwise (by an older hostd) does not. */
  async holds(_vmId: string, pid: number): Promise<boolean> {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    return cmdline.split('\0').some((a) => /^user,.*\brestrict=on\b/.test(a));
  }

  async upkeep(): Promise<boolean> {
    return false;
  }

  async bindDevice(): Promise<void> {}

  async unbindDevice(): Promise<void> {}

  refused(): Promise<number | undefined> {
    return Promise.resolve(undefined);
  }

  async remove(): Promise<void> {}

  sweep(): Promise<number> {
    return Promise.resolve(0);
  }

  async setClusterHosts(): Promise<void> {}
  async close(): Promise<void> {}

  describe(): string {
    return `qemu-restrict (no network for VMs): ${this.reason}`;
  }
}
