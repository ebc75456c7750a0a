/**
 * Part shipping on its own (no QEMU): a 256 MiB RAM-shaped part (113 MiB of data, the rest a hole,
 * like the tiny guest's RAM part) published by one store and fetched by another, first whole and
 * then as a re-snapshot with scattered pages dirtied, whose parent both sides hold. The old path
 * (one sparse-encoded object per part) is measured beside it on the same server.
 */
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { ObjectPartStore } from '@forky/bus';
import { median } from './stats.js';

const MiB = 2 ** 20;
const SIZE = 256 * MiB;
const DATA = 113 * MiB;
const PAGE = 4096;

export interface Figure {
  name: string;
  value: number;
  unit: string;
  runs: number[];
}

/** A RAM-shaped file: DATA bytes of random 64 KiB blocks spread over SIZE. */
async function ramPart(file: string): Promise<void> {
  const fh = await fs.open(file, 'w');
  await fh.truncate(SIZE);
  const blocks = SIZE / (64 * 1024);
  const used = DATA / (64 * 1024);
  const chunk = randomBytes(used * 64 * 1024);
  for (let b = 0, k = 0; b < blocks && k < used; b++) {
    // Spread the data: about 44% of the blocks, evenly.
    if (Math.floor(((b + 1) * used) / blocks) === Math.floor((b * used) / blocks)) continue;
    await fh.write(chunk, k++ * 64 * 1024, 64 * 1024, b * 64 * 1024);
  }
  await fh.close();
}

/** A copy of `src` with `n` distinct random pages rewritten. */
async function dirty(src: string, dest: string, n: number): Promise<void> {
  await fs.copyFile(src, dest);
  const pages = new Set<number>();
  while (pages.size < n) pages.add(randomInt(0, SIZE / PAGE));
  const fh = await fs.open(dest, 'r+');
  for (const p of pages) await fh.write(randomBytes(PAGE), 0, PAGE, p * PAGE);
  await fh.close();
}

const ms = async (fn: () => Promise<unknown>): Promise<number> => {
  const t = performance.now();
  await fn();
  return performance.now() - t;
};
const rate = (bytes: number, t: number): number => bytes / 2 ** 30 / (t / 1000);

export async function partFigures(natsUrl: string, opts: { runs: number; dirtied: number; old: boolean; dir: string }): Promise<Figure[]> {
  const conns: NatsConnection[] = [];
  const store = async (o: { cacheDir?: string; sparse?: boolean }): Promise<ObjectPartStore> => {
    const nc = await connect({ servers: natsUrl });
    conns.push(nc);
    return ObjectPartStore.open(nc, 1, o);
  };
  const dir = await fs.mkdtemp(path.join(opts.dir, 'fk-shipbench-'));
  const f = (n: string): string => path.join(dir, n);
  const r = { first: [] as number[], firstFetch: [] as number[], re: [] as number[], reFetch: [] as number[] };
  const moved = { up: [] as number[], down: [] as number[] };
  const old = { first: [] as number[], re: [] as number[], reBytes: [] as number[] };
  try {
    const a = await store({ cacheDir: f('cache-a') });
    const b = await store({ cacheDir: f('cache-b') });
    const oa = await store({ sparse: true });
    const ob = await store({ sparse: true });
    for (let i = 0; i < opts.runs; i++) {
      // Fresh content each run, so nothing of it is in the store yet.
      await ramPart(f('v0'));
      await dirty(f('v0'), f('v1'), opts.dirtied);
      let up0 = { digest: '' };
      const tu = await ms(async () => (up0 = await a.upload(f('v0'))));
      const td = await ms(() => b.download(up0.digest, f('b-v0'), 120_000));
      r.first.push(rate(SIZE, tu + td));
      r.firstFetch.push(rate(SIZE, td));
      let up1 = { digest: '', sentBytes: 0 };
      const tu1 = await ms(async () => (up1 = await a.upload(f('v1'), undefined, f('v0'))));
      let got = { receivedBytes: 0 };
      const td1 = await ms(async () => (got = await b.download(up1.digest, f('b-v1'), 120_000, f('b-v0'))));
      r.re.push(rate(SIZE, tu1 + td1));
      r.reFetch.push(rate(SIZE, td1));
      moved.up.push(up1.sentBytes / (opts.dirtied * PAGE));
      moved.down.push(got.receivedBytes / (opts.dirtied * PAGE));
      if (opts.old) {
        // Other content again: the old path must not find the new path's parts.
        await ramPart(f('o0'));
        await dirty(f('o0'), f('o1'), opts.dirtied);
        let o0 = { digest: '' };
        const ou = await ms(async () => (o0 = await oa.upload(f('o0'))));
        const od = await ms(() => ob.download(o0.digest, f('ob-o0'), 120_000));
        old.first.push(rate(SIZE, ou + od));
        let o1 = { digest: '' };
        let og = { receivedBytes: 0 };
        const ou1 = await ms(async () => (o1 = await oa.upload(f('o1'))));
        const od1 = await ms(async () => (og = await ob.download(o1.digest, f('ob-o1'), 120_000)));
        old.re.push(rate(SIZE, ou1 + od1));
        old.reBytes.push(og.receivedBytes / (opts.dirtied * PAGE));
      }
      for (const n of await fs.readdir(dir)) if (!n.startsWith('cache')) await fs.rm(f(n), { force: true });
      await a.sweep(0);
    }
  } finally {
    for (const nc of conns) await nc.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
  const fig = (name: string, runs: number[], unit = 'GiB/s'): Figure => ({ name, value: median(runs), unit, runs });
  const out = [
    fig('part shipping, first publish+fetch of 256 MiB, effective', r.first),
    fig('  of which the fetch alone, effective', r.firstFetch),
    fig(`part shipping, re-snapshot (${opts.dirtied} pages dirtied) publish+fetch, effective`, r.re),
    fig('  of which the fetch alone, effective', r.reFetch),
    fig('re-snapshot bytes fetched ÷ bytes of the pages dirtied', moved.down, 'x'),
    fig('re-snapshot bytes published ÷ bytes of the pages dirtied', moved.up, 'x'),
  ];
  if (opts.old)
    out.push(
      fig('old path (sparse object a part): first publish+fetch', old.first),
      fig('old path: re-snapshot publish+fetch', old.re),
      fig('old path: re-snapshot bytes fetched ÷ bytes dirtied', old.reBytes, 'x'),
      { name: 'first publish+fetch, new ÷ old path', value: median(r.first) / median(old.first), unit: 'x', runs: [] },
      { name: 're-snapshot publish+fetch, new ÷ old path', value: median(r.re) / median(old.re), unit: 'x', runs: [] },
    );
  return out;
}
