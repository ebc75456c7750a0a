import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startEngineHost, type EngineHost } from '../helpers/engine-host.js';
import { boot } from '../helpers/engine-checks.js';
import { refused } from '../helpers/errors.js';
import { MemoryParts } from '../helpers/memory-parts.js';

/**
 * A manifest's part sizes bound what a fetch holds a part's map to (review R2 of chunked parts,
 * finding 1): a RAM part larger than the profile's memory, or a layer larger than the disk, is
 * refused by field before anything is fetched (dry run, object store in memory).
 */
describe('a fetched manifest whose part sizes its profile cannot have (dry run)', () => {
  it('RAM past memMiB, state past it, a layer past the disk: BAD_REQUEST naming the field, nothing fetched', async () => {
    const parts = new MemoryParts('d'.repeat(64));
    const hosts: EngineHost[] = [];
    try {
      const a = await startEngineHost({ parts, hostId: 'h-a' });
      hosts.push(a);
      const b = await startEngineHost({ parts, hostId: 'h-b' });
      hosts.push(b);
      const vm = await boot(a);
      const snap = await a.engine.snapshot({ vm: vm.id, resume: true });
      await a.engine.publish(snap.id);
      const good = structuredClone(parts.manifests.get(snap.id)) as {
        v: number;
        snapshot: { profile: { memMiB: number } };
        diskVirtualSize: number;
        ram: { size: number };
        state: { size: number };
        chain: Array<{ size: number }>;
      };
      assert.equal(good.v, 1, 'no part is a chunk map here: v 1, readable by every host');
      const mem = good.snapshot.profile.memMiB * 2 ** 20;
      for (const [field, lie] of [
        ['ram.size', (m: typeof good) => (m.ram.size = mem + 1)],
        ['state.size', (m: typeof good) => (m.state.size = 2 ** 40)],
        ['chain[0].size', (m: typeof good) => ((m.chain[0] as { size: number }).size = 2 * m.diskVirtualSize + (1 << 30))],
      ] as const) {
        const m = structuredClone(good);
        lie(m);
        parts.manifests.set(snap.id, m);
        const e = await refused(b.engine.fetch(snap.id));
        assert.equal(e.code, 'BAD_REQUEST', String(e));
        assert.equal(e.details?.field, field, String(e));
        assert.ok(!b.engine.listSnapshots().some((s) => s.id === snap.id), 'nothing fetched');
      }
      parts.manifests.set(snap.id, good);
      await b.engine.fetch(snap.id);
      assert.ok(
        b.engine.listSnapshots().some((s) => s.id === snap.id),
        'the true manifest fetches',
      );
    } finally {
      for (const h of hosts) await h.close();
    }
  });
});
