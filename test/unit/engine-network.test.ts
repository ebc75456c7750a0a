import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startEngineHost } from '../helpers/engine-host.js';

describe('engine: each VM egress policy, through its life', { concurrency: true }, () => {
  it('a boot applies its policy before the VM runs, a child inherits it, a destroy removes it', async () => {
    let h = await startEngineHost();
    try {
      const vm = await h.engine.boot({
        image: 'tiny',
        memMiB: 256,
        cpus: 1,
        gpus: 0,
        network: { egress: { allow: ['10.1.0.0/16'], dns: false } },
      });
      assert.deepEqual(h.network.policies.get(vm.id), { allow: ['10.1.0.0/16'], dns: false });
      assert.deepEqual(vm.network, { egress: { allow: ['10.1.0.0/16'], dns: false }, enforcedBy: 'nftables' });
      const f = await h.engine.fork({ source: vm.id, count: 2, resumeParent: true, until: 'ready' });
      for (const c of f.children) assert.deepEqual(h.network.policies.get(c.id), { allow: ['10.1.0.0/16'], dns: false });
      // A change under a key, then a late resend of that older key: the newer policy stands.
      await h.engine.network({ id: vm.id, network: { egress: 'none' }, key: 'net-key-000000000001' });
      await h.engine.network({ id: vm.id, network: { egress: 'internet' }, key: 'net-key-000000000002' });
      await h.engine.network({ id: vm.id, network: { egress: 'none' }, key: 'net-key-000000000001' });
      assert.equal(h.network.policies.get(vm.id), 'internet');
      assert.equal(h.engine.show(vm.id).network?.egress, 'internet');
      // A restarted engine keeps each VM's policy…
      h = await h.restart();
      assert.equal(h.network.policies.get(vm.id), 'internet');
      assert.deepEqual(h.network.policies.get(f.children[0]!.id), { allow: ['10.1.0.0/16'], dns: false });
      await h.engine.destroy(f.children[0]!.id);
      assert.equal(h.network.policies.has(f.children[0]!.id), false);
    } finally {
      await h.close();
    }
  });

  it('a VM taken back after a restart whose process runs outside its filter is stopped and failed, saying why', async () => {
    let h = await startEngineHost();
    try {
      const vm = await h.engine.boot({ image: 'tiny', memMiB: 256, cpus: 1, gpus: 0 });
      const other = await h.engine.boot({ image: 'tiny', memMiB: 256, cpus: 1, gpus: 0 });
      h.network.outside.add(vm.id);
      h = await h.restart();
      const v = h.engine.show(vm.id);
      assert.equal(v.state, 'failed');
      assert.match(v.failure?.reason ?? '', /outside its network filter/);
      assert.equal(v.pid, undefined);
      assert.equal(h.engine.show(other.id).state, 'running', 'a VM inside its filter is kept');
    } finally {
      await h.close();
    }
  });
});
