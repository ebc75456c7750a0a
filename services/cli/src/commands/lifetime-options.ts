import type { Option } from 'commander';
import { lateOption } from './late-args.js';

// The SDK's duration parsers (lifetime-args.ts) need the contract: loaded only when the option is given.
const lifetimeArgs = () => import('../lifetime-args.js');

export const IDLE_HELP =
  'DURATION:pause or DURATION:destroy, e.g. 5m:pause: what is done after that long without exec, file or port activity (a VM it paused resumes when touched)';

/** `--ttl 10m`: from 1s to 30d. */
export const ttlOption = (description: string): Option =>
  lateOption('--ttl <duration>', description, async () => (await lifetimeArgs()).ttlArg);

/** `--idle 5m:pause`: the idle rule. */
export const idleOption = (description: string): Option =>
  lateOption('--idle <D:then>', description, async () => (await lifetimeArgs()).idleArg);

/** `--ready-timeout 90s` and the like: any duration. */
export const durationOption = (flag: string, description: string): Option =>
  lateOption(`--${flag} <duration>`, description, async () => (await lifetimeArgs()).durationArg(flag));
