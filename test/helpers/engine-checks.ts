import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { it } from 'node:test';
import { BootRequest, ForkRequest, type ForkResult, type VmInfo } from '@forky/contract';
import type { EngineHost } from './engine-host.js';
import type { Proc } from './fault-runtime.js';

/** Requests as the wire would give them, defaults filled in by the contract. */
export const bootReq = (over: Partial<BootRequest> = {}): BootRequest => BootRequest.parse({ memMiB: 64, ...over });
export const forkReq = (source: string, count: number, over: Partial<ForkRequest> = {}): ForkRequest =>
  ForkRequest.parse({ source, count, ...over });

export const boot = (h: EngineHost, over: Partial<BootRequest> = {}): Promise<VmInfo> => h.engine.boot(bootReq(over));
export const fork = (h: EngineHost, source: string, count: number, over: Partial<ForkRequest> = {}): Promise<ForkResult> =>
  h.engine.fork(forkReq(source, count, over));

/** The one live process of VM `id`, which must be the one the engine reports. */
export function processOf(h: EngineHost, id: string): Proc {
  const info = h.engine.show(id);
  const live = h.runtime.live(id);
  assert.equal(live.length, 1, `VM ${id} has exactly one process (has ${live.map((p) => p.pid).join(', ') || 'none'})`);
  const p = live[0] as Proc;
  assert.equal(info.pid, p.pid, `the engine reports the live process of ${id}`);
  return p;
}

/** VM `id` is listed in `state` and its process is in that state too. */
export function assertVm(h: EngineHost, id: string, state: 'running' | 'paused'): Proc {
  assert.equal(h.engine.show(id).state, state);
  const p = processOf(h, id);
  assert.equal(p.status, state, `the process of ${id} is ${state}`);
  return p;
}

/** Ids of the VMs that have files on the host (a directory under data/vms or a RAM file). */
export async function vmsWithFiles(h: EngineHost): Promise<string[]> {
  const ids = (await h.files()).flatMap((f) => /^(?:data\/vms\/|ram\/vms\/)(vm-[^/.]+)/.exec(f)?.[1] ?? []);
  return [...new Set(ids)].sort();
}

/** Ids of the snapshots that have files on the host. */
export async function snapsWithFiles(h: EngineHost): Promise<string[]> {
  const ids = (await h.files()).flatMap((f) => /^(?:data\/snapshots\/|ram\/snapshots\/)(snap-[^/.]+)/.exec(f)?.[1] ?? []);
  return [...new Set(ids)].sort();
}

export const sorted = (xs: Iterable<string>): string[] => [...xs].sort();
export const exists = (f: string): Promise<boolean> =>
  fs.access(f).then(
    () => true,
    () => false,
  );

/**
 * The last test of a file: prints how long the file took (its own process, start-up included) and
 * fails past the bound of 5 s for the engine's tests. Called at the end of the file.
 */
export function reportDuration(name: string, budgetMs = 5000): void {
  it(`${name}: runs in well under ${budgetMs / 1000} s`, (t) => {
    const ms = Math.round(performance.now());
    t.diagnostic(`${name}: ${ms} ms without QEMU or NATS`);
    assert.ok(ms < budgetMs, `${name} took ${ms} ms`);
  });
}

/** Everything a refusal must leave as it was. */
export async function hostState(h: EngineHost) {
  return {
    vms: h.engine.list().map((v) => [v.id, v.state, v.pid]),
    snaps: h.engine.listSnapshots().map((s) => s.id),
    live: h.runtime.live().map((p) => p.pid),
    files: await h.files(),
    dir: [sorted(h.directory.vms), sorted(h.directory.snaps), sorted(h.directory.lineage.keys())],
  };
}
