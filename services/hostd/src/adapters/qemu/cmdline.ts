import path from 'node:path';
import { checkSocketPath } from '@forky/base';
import type { Accel } from '@forky/contract';
import type { AppDisk, VmSpec } from '../../domain/ports.js';
import { tapName, type NetworkMode } from './tap.js';

export interface MachineOptions {
  accel: Accel;
  machine: string;
  cpuModel: string;
  /** TCG translation buffer size; undefined keeps QEMU's default. */
  tcgTbSizeMiB?: number;
  sandbox: boolean;
  network: NetworkMode;
  /** The unprivileged user QEMU switches to once started; undefined keeps hostd's user. */
  runAs?: { user: string };
}

export interface LaunchPaths {
  qmpSocket: string;
  /** A second QMP monitor QEMU listens on: a restarted hostd re-attaches through it. */
  qmpServerSocket: string;
  qgaSocket: string;
  /** hostd's line channel to the guest's forky-ident (a child's identity). */
  ctlSocket: string;
  /** hostd's session with the guest's forky-agent (exec, processes, files: libs/agent/PROTOCOL.md). */
  agentSocket: string;
  /** The guest's `forky-fork` requests (self-fork, issue 22); every VM has it, so children match their parents. */
  forkSocket: string;
  serialLog: string;
}

/**
 * `boot`: from the kernel. `autostart`: waits for state and runs as soon as it is loaded (no
 * `cont` round trip). `paused`: waits for state and stays stopped once it is loaded.
 */
export type LaunchMode = 'boot' | 'autostart' | 'paused';

/** QEMU's option syntax doubles commas inside a value. */
const esc = (s: string): string => s.replaceAll(',', ',,');

/**
 * The QEMU command line for one VM. Parent and children get the same devices in the same order
 * with the same ids and the same RAM backend id and size: device state restores only onto an
 * identical machine. QEMU dials hostd's QMP socket (server=off), so readiness is an event.
 */
export function buildArgs(spec: VmSpec, m: MachineOptions, paths: LaunchPaths, mode: LaunchMode): string[] {
  const accel = m.accel === 'tcg' && m.tcgTbSizeMiB ? `tcg,tb-size=${m.tcgTbSizeMiB}` : m.accel;
  const args = [
    '-name',
    `forky-${spec.id},debug-threads=on`,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-machine',
    `${m.machine},memory-backend=mem,suppress-vmdesc=on`,
    '-accel',
    accel,
    '-cpu',
    m.cpuModel,
    '-smp',
    String(spec.cpus),
    '-m',
    `${spec.memMiB}M`,
    '-object',
    `memory-backend-file,id=mem,size=${spec.memMiB}M,mem-path=${esc(spec.ram.file)},share=${spec.ram.shared ? 'on' : 'off'}`,
    '-kernel',
    spec.image.kernel,
    '-initrd',
    spec.image.initrd,
    '-append',
    spec.kernelCmdline,
    '-blockdev',
    JSON.stringify({ driver: 'qcow2', 'node-name': 'disk0', file: { driver: 'file', filename: spec.diskFile } }),
    '-device',
    'virtio-blk-pci,drive=disk0,id=vda',
    ...spec.appDisks.flatMap((d) => ['-blockdev', JSON.stringify(appBlockdev(d)), '-device', deviceArg(appDevice(d))]),
    '-device',
    'virtio-serial-pci,id=vser0',
    '-chardev',
    `socket,id=qga0,path=${esc(paths.qgaSocket)},server=on,wait=off`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0',
    '-chardev',
    `socket,id=ctl0,path=${esc(paths.ctlSocket)},server=on,wait=off`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=ctl0,name=org.forky.ctl.0',
    '-chardev',
    `socket,id=agent0,path=${esc(paths.agentSocket)},server=on,wait=off`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=agent0,name=org.forky.agent.0',
    '-chardev',
    `socket,id=fork0,path=${esc(paths.forkSocket)},server=on,wait=off`,
    '-device',
    'virtserialport,bus=vser0.0,chardev=fork0,name=org.forky.fork.0',
    '-object',
    'rng-random,filename=/dev/urandom,id=rng0',
    '-device',
    'virtio-rng-pci,rng=rng0',
    '-netdev',
    m.network.mode === 'tap'
      ? `tap,id=net0,ifname=${tapName(spec.id, spec.generation)},script=no,downscript=no`
      : // restrict=on: a host with no filter gives its guests no way out at all (egress `none`).
        `user,id=net0${spec.net.restrict ? ',restrict=on' : ''}`,
    '-device',
    `virtio-net-pci,netdev=net0,mac=${spec.mac},romfile=,id=nic0`,
    // A new generation id per process: loading state writes it into the guest and notifies it.
    '-device',
    'vmgenid,guid=auto,id=vmgenid0',
    '-chardev',
    `file,id=ser0,path=${esc(paths.serialLog)},append=on`,
    '-serial',
    'chardev:ser0',
    '-chardev',
    `socket,id=qmp0,path=${esc(paths.qmpSocket)},server=off`,
    '-mon',
    'chardev=qmp0,mode=control',
    '-chardev',
    `socket,id=qmp1,path=${esc(paths.qmpServerSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmp1,mode=control',
    // Device state is saved without RAM or configuration sections (xen-save-devices-state), so
    // loading must not expect them.
    '-global',
    'migration.send-configuration=off',
  ];
  // Passed-through functions come last, after every device a snapshot's state names.
  for (const [i, bdf] of spec.gpus.entries()) args.push('-device', `vfio-pci,host=${bdf},id=gpu${i}`);
  // A process that has dropped to an unprivileged user has nothing to elevate to, and the
  // switch itself is a setuid call that elevateprivileges=deny would kill (SIGSYS; tried).
  if (m.sandbox) args.push('-sandbox', `on,obsolete=deny,elevateprivileges=${m.runAs ? 'allow' : 'deny'},spawn=deny,resourcecontrol=deny`);
  if (m.runAs) args.push('-runas', m.runAs.user);
  if (mode !== 'boot') args.push('-incoming', 'defer');
  if (mode === 'paused') args.push('-S');
  return args;
}

/** App disks sit at fixed slots from 0x10 up, clear of the devices QEMU places itself. */
export const APP_SLOT_BASE = 0x10;

/** The read-only block node of an app disk; the same for the command line and a hot-plug. */
export function appBlockdev(d: AppDisk): Record<string, unknown> {
  return { driver: 'raw', 'node-name': `app${d.slot}`, 'read-only': true, file: { driver: 'file', filename: d.file, 'read-only': true } };
}

/** The device of an app disk, as `device_add` takes it; `deviceArg` makes the `-device` form of the same. */
export function appDevice(d: AppDisk): { driver: string } & Record<string, string> {
  return {
    driver: 'virtio-blk-pci',
    drive: `app${d.slot}`,
    id: `app${d.slot}`,
    serial: d.serial,
    addr: `0x${(APP_SLOT_BASE + d.slot).toString(16)}`,
  };
}

function deviceArg({ driver, ...props }: { driver: string } & Record<string, string>): string {
  return [driver, ...Object.entries(props).map(([k, v]) => `${k}=${esc(v)}`)].join(',');
}

/** A socket of one process of a VM: per generation, since a successor starts while its predecessor still runs. */
export function vmSocket(spec: VmSpec, name: string): string {
  return checkSocketPath(path.join(spec.runDir, `${name}.${spec.generation}.sock`));
}

/** Where one process of a VM has its monitors, channels and console. */
export function launchPaths(spec: VmSpec): LaunchPaths {
  return {
    qmpSocket: vmSocket(spec, 'qmp'),
    qmpServerSocket: vmSocket(spec, 'qmpd'),
    qgaSocket: vmSocket(spec, 'qga'),
    ctlSocket: vmSocket(spec, 'ctl'),
    agentSocket: vmSocket(spec, 'agent'),
    forkSocket: vmSocket(spec, 'fork'),
    serialLog: path.join(spec.runDir, 'serial.log'),
  };
}
