import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Kvm, type KV } from '@nats-io/kv';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { inboxPrefixOf, PARTS_BUCKET } from '@forky/bus';
import { BUCKETS, subjects } from '@forky/contract';
import { INVALID_UTF8 } from './fuzz-bodies.js';
import { RawNats } from './raw-nats.js';

const enc = new TextEncoder();

/** Ids nothing has: what the hostile entries are filed under, and what the probes then ask for. */
export const GHOST_VM = 'vm-zzzzzzzzzzzz';
export const GHOST_SNAP = 'snap-zzzzzzzzzzzz';

/**
 * Values a host's credentials let it write where the scheduler or hostd read them back: not
 * JSON, not UTF-8, the wrong shape, a host id with a newline, a prototype trick, a node filed
 * under another id, deep nesting, a large value.
 */
export const HOSTILE_VALUES: ReadonlyArray<{ value: Uint8Array; how: string }> = [
  ['{}', '{}'],
  ['', 'empty'],
  ['null', 'null'],
  ['[{"host":"fz1"}]', 'an array'],
  ['"fz1"', 'a string'],
  ['{"host":""}', 'an empty host'],
  ['{"host":"a\\nb"}', 'a host with a newline'],
  ['{"host":"../../x"}', 'a host that is a path'],
  ['{"host":"fz1","x":"\\u0000"}', 'an extra field'],
  ['{"__proto__":{"host":"fz1"}}', 'a prototype trick'],
  ['{"host":', 'truncated JSON'],
  [
    `{"id":"snap-yyyyyyyyyyyy","host":"fz1","image":"tiny","vm":"vm-yyyyyyyyyyyy","createdAt":"2026-01-01T00:00:00.000Z"}`,
    'a lineage node filed under another id',
  ],
  [`${'['.repeat(20_000)}${']'.repeat(20_000)}`, 'nested 20000 deep'],
  [`{"host":"${'h'.repeat(200_000)}"}`, 'a 200 kB host'],
  [`{"id":"fz2\\r\\nX: y","ts":1e308,"vmList":"\\u2028"}`, 'a heartbeat with control characters'],
]
  .map(([v, how]) => ({ value: enc.encode(v as string), how: how as string }))
  .concat(
    INVALID_UTF8.map((b) => ({
      value: Uint8Array.from([0x7b, 0x22, 0x68, 0x22, 0x3a, 0x22, ...b, 0x22, 0x7d]),
      how: `a host of bytes ${Buffer.from(b).toString('hex')}`,
    })),
  );

/** Subject tokens NATS carries but no client makes: a control byte, NUL, DEL, bytes that are not UTF-8. */
export const ODD_TOKENS: readonly Buffer[] = [
  Buffer.from([0x01]),
  Buffer.from([0x00]),
  Buffer.from([0x7f]),
  Buffer.from([0xff, 0xfe]),
  Buffer.from('ü'),
  Buffer.from([0x1b, 0x5b, 0x32, 0x4a]),
];

/**
 * Writes hostile entries, with one host's credentials, into everything that host may write
 * (libs/bus/src/auth.ts): its own key in the hosts bucket and its heartbeat subject, any key of
 * the locator and the lineage (odd keys too, by raw publishes), and objects in the parts store.
 */
export class HostileWriter {
  written = 0;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly raw: RawNats,
    private readonly rogueId: string,
    private readonly kv: { hosts: KV; locator: KV; lineage: KV },
    private readonly parts: ObjectStore,
  ) {}

  static async open(url: string, port: number, rogueId: string, creds: { user: string; pass: string }): Promise<HostileWriter> {
    const nc = await connect({ servers: url, user: creds.user, pass: creds.pass, inboxPrefix: inboxPrefixOf(creds.user) });
    const kvm = new Kvm(nc);
    const kv = { hosts: await kvm.open(BUCKETS.hosts), locator: await kvm.open(BUCKETS.locator), lineage: await kvm.open(BUCKETS.lineage) };
    return new HostileWriter(
      nc,
      await RawNats.connect(port, creds, `${inboxPrefixOf(creds.user)}.raw`),
      rogueId,
      kv,
      await new Objm(nc).open(PARTS_BUCKET),
    );
  }

  /** Writes `value` everywhere this host may write, and waits until the server has it all. */
  async writeEverywhere(value: Uint8Array): Promise<void> {
    await this.kv.hosts.put(this.rogueId, value);
    this.nc.publish(subjects.heartbeat(this.rogueId), value);
    for (const key of [`vm.${GHOST_VM}`, `snap.${GHOST_SNAP}`]) await this.kv.locator.put(key, value);
    for (const key of [GHOST_SNAP, 'snap-xxxxxxxxxxxx']) await this.kv.lineage.put(key, value);
    await this.parts.putBlob({ name: `manifest.${GHOST_SNAP}` }, value);
    for (const t of ODD_TOKENS) {
      for (const b of [BUCKETS.locator, BUCKETS.lineage])
        this.raw.publish(Buffer.concat([Buffer.from(`$KV.${b}.`), t]), Buffer.from(value));
    }
    this.written += 8 + 2 * ODD_TOKENS.length;
    await this.nc.flush();
    await this.raw.flush();
    if (this.raw.errors.length > 0) throw new Error(`the server refused a write: ${this.raw.errors.join('; ')}`);
  }

  /** Deletes what writeEverywhere wrote (odd keys by a raw delete marker), so state compares equal. */
  async removeAll(): Promise<void> {
    for (const key of [`vm.${GHOST_VM}`, `snap.${GHOST_SNAP}`]) await this.kv.locator.delete(key);
    for (const key of [GHOST_SNAP, 'snap-xxxxxxxxxxxx']) await this.kv.lineage.delete(key);
    await this.parts.delete(`manifest.${GHOST_SNAP}`);
    for (const t of ODD_TOKENS) {
      for (const b of [BUCKETS.locator, BUCKETS.lineage])
        this.raw.publish(Buffer.concat([Buffer.from(`$KV.${b}.`), t]), '', { headers: 'NATS/1.0\r\nKV-Operation: DEL\r\n\r\n' });
    }
    await this.raw.flush();
  }

  async close(): Promise<void> {
    this.raw.close();
    await this.nc.close();
  }
}
