import { randomBytes } from 'node:crypto';
import { ForkyError, type Logger } from '@forky/base';
import type { VmHandle, VmRuntime } from './ports.js';
import type { VmRecord } from './records.js';

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
 * The identity VM `vm` has: its id as VM id and hostname (a boot sets the same through the kernel
 * command line), its MAC. A child is given it once restored; a resumed VM is given it again.
 */
export function identityOf(vm: Pick<VmRecord, 'id' | 'mac'>, runtime: Pick<VmRuntime, 'bridged'>): Identity {
  return { vmId: vm.id, hostname: vm.id, mac: vm.mac, renewLease: runtime.bridged };
}

/** How long a resume waits for forky-ident to step the clock (it answers in milliseconds). */
export const CLOCK_STEP_MS = 2000;

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

/**
 * Steps a resumed VM's clock to the host's (it stood still while the VM was paused) the way a
 * child's is stepped: its own identity again, fresh entropy and the time. On a bridged network
 * the lease is renewed too (the guest's DHCP timers stood still as well). Never fails: a guest
 * that does not answer, or refuses, is logged and runs on; its clock is its own business then.
 */
export async function stepClock(runtime: VmRuntime, h: VmHandle, vm: Pick<VmRecord, 'id' | 'mac'>, log: Logger): Promise<void> {
  try {
    await giveIdentity(runtime, h, identityOf(vm, runtime), CLOCK_STEP_MS);
  } catch (err) {
    log.warn({ err, vm: vm.id }, "the guest's clock was not stepped after the resume");
  }
}
