import { createHash } from 'node:crypto';
import { execa } from 'execa';
import { ForkyError } from '@forky/base';

/** Where VMs' NICs go: QEMU's user-mode NAT (each VM its own), or a TAP device on a host bridge. */
export type NetworkMode = { mode: 'user' } | { mode: 'tap'; bridge: string };

/** A TAP name per VM process (a successor runs beside its predecessor): ≤ 15 characters. */
export function tapName(vmId: string, generation: number): string {
  return `fk${createHash('sha256').update(`${vmId}/${generation}`).digest('hex').slice(0, 12)}`;
}

/** Makes the TAP device and puts it on the bridge, up. Done by hostd: QEMU may not (sandbox). */
export async function createTap(name: string, bridge: string): Promise<void> {
  try {
    await execa('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap']);
    await execa('ip', ['link', 'set', name, 'master', bridge, 'up']);
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
  await execa('ip', ['link', 'del', name]).catch(() => undefined);
}
