import { randomBytes } from 'node:crypto';
import { ForkyError } from '@forky/base';
import type { VmHandle, VmRuntime } from './ports.js';

/** A locally administered, unicast MAC address (02:…), unique among `taken`. */
export function newMac(taken: ReadonlySet<string>): string {
  for (;;) {
    const b = randomBytes(6);
    b[0] = 0x02;
    const mac = [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
    if (!taken.has(mac)) return mac;
  }
}

export interface Identity {
  vmId: string;
  hostname: string;
  mac: string;
  /** On a bridged network the child also asks DHCP for a lease of its own. */
  renewLease: boolean;
}

/**
 * Makes a restored child its own machine: the image's resident forky-ident (images/tiny/ident.c),
 * told over its own serial port, sets its VM id, hostname and MAC,
 * mixes fresh host entropy into the guest RNG and forces a reseed (siblings would otherwise draw
 * the same random numbers), and steps the clock to the host's (it stopped when the snapshot was
 * taken). The VM generation id needs nothing here: every process starts with a new one
 * (`vmgenid,guid=auto`), which QEMU writes into the guest and announces when state is loaded.
 */
export async function giveIdentity(runtime: VmRuntime, vm: VmHandle, id: Identity, timeoutMs: number): Promise<void> {
  const now = Date.now();
  const line = [
    id.vmId,
    id.hostname,
    id.mac,
    randomBytes(64).toString('hex'),
    String(Math.floor(now / 1000)),
    String((now % 1000) * 1e6),
    ...(id.renewLease ? ['lease'] : []),
  ].join(' ');
  const answer = await runtime.control(vm, line, timeoutMs);
  if (answer !== 'ok')
    throw new ForkyError('INTERNAL', `the guest's forky-ident refused the identity of VM ${id.vmId}: ${answer.slice(0, 300)}`);
}
