import type { Logger } from '@forky/base';
import type { Buckets } from '@forky/bus';
import type { Located } from './directory-reads.js';
import type { Hosts } from './hosts.js';

/** What every operation of the scheduler works over; it holds no state of the cluster's own. */
export interface SchedContext {
  readonly hosts: Hosts;
  readonly buckets: Buckets;
  /** Assumed cost of one forked child when placing (hostd checks for real). */
  readonly childCostMiB: number;
  readonly log: Logger;
  /** The host that holds a VM or snapshot (from the locator bucket), or NOT_FOUND. */
  locate(kind: Located, id: string): Promise<string>;
}
