import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Egress } from '@forky/contract';
import { startEngineHost } from '../helpers/engine-host.js';

describe('engine: a fork given a network policy', () => {
  it('filters each child by it before its state loads (vCPUs run), instead of the source’s', async () => {
    const h = await startEngineHost();
    try {
      const vm = await h.engine.boot({ image: 'tiny', memMiB: 256, cpus: 1, gpus: 0 });
      const snap = await h.engine.snapshot({ vm: vm.id, resume: true });
      // What the filter held when each child's state was loaded (the child runs from then on).
      const atLoad: Egress[][] = [];
      const load = h.runtime.load.bind(h.runtime);
      h.runtime.load = (...args: Parameters<typeof load>) => {
        atLoad.push([...h.network.policies.values()]);
        return load(...args);
      };
      const f = await h.engine.fork({ source: snap.id, count: 2, resumeParent: false, until: 'ready', network: { egress: 'none' } });
      assert.equal(atLoad.length, 2);
      for (const held of atLoad) assert.ok(held.includes('none'), `a child's filter is in place at its load: ${JSON.stringify(held)}`);
      for (const c of f.children) {
        assert.equal(h.network.policies.get(c.id), 'none');
        assert.equal(c.network?.egress, 'none');
      }
      assert.equal(h.network.policies.get(vm.id), 'internet', 'the source keeps its own');
      const plain = await h.engine.fork({ source: snap.id, count: 1, resumeParent: false, until: 'ready' });
      assert.equal(h.network.policies.get(plain.children[0]!.id), 'internet', 'without it, a child inherits the snapshot’s');
    } finally {
      await h.close();
    }
  });
});
