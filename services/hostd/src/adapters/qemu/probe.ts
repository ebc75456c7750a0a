import fs from 'node:fs/promises';
import { constants } from 'node:fs';
import os from 'node:os';
import { execa } from 'execa';
import type { Logger } from '@forky/base';
import type { Accel } from '@forky/contract';
import type { Image } from '../../images.js';

export interface ProbeResult {
  accel: Accel;
  reason: string;
  qemuVersion: string;
}

export async function qemuVersion(binary: string): Promise<string> {
  const { stdout } = await execa(binary, ['--version']);
  const m = /version (\d+\.\d+\.\d+)/.exec(stdout);
  if (!m?.[1]) throw new Error(`cannot read QEMU version from: ${stdout.split('\n')[0]}`);
  return m[1];
}

/**
 * Picks the fastest accelerator that really works: KVM only if a probe boot of the image reaches
 * its /init within the deadline (a /dev/kvm that exists can still be unable to run a guest, as on
 * nested paravirtual hosts). The outcome is cached per QEMU version, host kernel and image, since
 * a failing probe costs its whole deadline.
 */
export async function probeAccel(
  binary: string,
  image: Image,
  opts: { cacheFile: string; timeoutMs: number; logger: Logger },
): Promise<ProbeResult> {
  const version = await qemuVersion(binary);
  const key = `${version}|${os.release()}|${image.id}`;
  const cached = await fs.readFile(opts.cacheFile, 'utf8').then(
    (s) => JSON.parse(s) as ProbeResult & { key: string },
    () => undefined,
  );
  if (cached?.key === key) return { accel: cached.accel, reason: `${cached.reason} (cached)`, qemuVersion: version };

  let result: ProbeResult;
  const kvmOk = await fs.access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  if (!kvmOk) {
    result = { accel: 'tcg', reason: '/dev/kvm is not accessible', qemuVersion: version };
  } else {
    const started = Date.now();
    const child = execa(
      binary,
      [
        '-nodefaults',
        '-no-user-config',
        '-display',
        'none',
        '-no-reboot',
        '-machine',
        'pc',
        '-accel',
        'kvm',
        '-cpu',
        'host',
        '-m',
        '128M',
        '-kernel',
        image.kernel,
        '-initrd',
        image.initrd,
        '-append',
        `${image.cmdline} forky.probe`,
        '-serial',
        'stdio',
      ],
      { reject: false, timeout: opts.timeoutMs, stdin: 'ignore', stderr: 'pipe', stdout: 'pipe', buffer: false },
    );
    const reached = await new Promise<boolean>((resolve) => {
      let out = '';
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('FORKY-PROBE-OK')) resolve(true);
        if (out.length > 1 << 20) out = out.slice(-4096);
      });
      void child.then(() => resolve(false));
    });
    child.kill('SIGKILL');
    await child.catch(() => undefined);
    result = reached
      ? { accel: 'kvm', reason: `KVM probe boot reached init in ${Date.now() - started} ms`, qemuVersion: version }
      : { accel: 'tcg', reason: `KVM probe boot did not reach init within ${opts.timeoutMs} ms`, qemuVersion: version };
  }
  opts.logger.info(result, 'accelerator probe');
  await fs.writeFile(opts.cacheFile, JSON.stringify({ ...result, key }), 'utf8').catch(() => undefined);
  return result;
}
