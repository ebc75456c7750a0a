import { createHash } from 'node:crypto';
import { execa } from 'execa';
import { ForkyError } from '@forky/base';

/** Where VMs' NICs go: QEMU's user-mode NAT (each VM its own), or a TAP device on a host bridge. */
export type NetworkMode = { mode: 'user' } | { mode: 'tap'; bridge: string };

/** A TAP name per VM process (a successor runs beside its predecessor): ≤ 15 characters. */
export function tapName(vmId: string, generation: number): string {
  return `fk${createHash('sha256').update(`${vmId}/${generation}`).digest('hex').slice(0, 12)}`;
}

/** Every command here is quick; a hung one must not hang hostd. */
const IP_TIMEOUT_MS = 10_000;

/**
 * Makes the TAP device and puts it on the bridge, up. Done by hostd: QEMU may not (sandbox).
 * The port is isolated: the bridge forwards nothing between isolated ports, so VMs on it cannot
 * reach one another (their way to the host and beyond passes the egress filter at the TAP).
 */
export async function createTap(name: string, bridge: string): Promise<void> {
  try {
    await execa('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap'], { timeout: IP_TIMEOUT_MS });
    await execa('ip', ['link', 'set', name, 'master', bridge], { timeout: IP_TIMEOUT_MS });
    // Isolated before it is up: no frame crosses to another VM's port, not even the first.
    await execa('bridge', ['link', 'set', 'dev', name, 'isolated', 'on'], { timeout: IP_TIMEOUT_MS });
    await execa('ip', ['link', 'set', name, 'up'], { timeout: IP_TIMEOUT_MS });
  } catch (e) {
    await removeTap(name);
    throw new ForkyError(
      'INTERNAL',
      `cannot make TAP ${name} on bridge ${bridge}: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`,
      { cause: e },
    );
  }
}

export async function removeTap(name: string): Promise<void> {
  await execa('ip', ['link', 'del', name], { timeout: IP_TIMEOUT_MS }).catch(() => undefined);
}
