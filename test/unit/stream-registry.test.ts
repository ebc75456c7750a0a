import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StreamRegistry } from '@forky/hostd/internal';

describe('stream slots: per VM and per host, streams and port connections counted apart', () => {
  it('a host full of port connections still opens exec and file streams, and the other way round', () => {
    const r = new StreamRegistry({ perVm: 2, portsPerVm: 3, perHost: 4, portsPerHost: 6, keyTtlMs: 1000 });
    const ports = ['vm-a', 'vm-a', 'vm-a', 'vm-b', 'vm-b', 'vm-b'].map((vm) => r.reserve(vm, 'port'));
    assert.throws(() => r.reserve('vm-c', 'port'), /6 port connections open, the most it may \(6 per host\)/);
    const streams = ['vm-a', 'vm-a', 'vm-b', 'vm-b'].map((vm) => r.reserve(vm));
    assert.throws(() => r.reserve('vm-c'), /4 streams open, the most it may \(4 per host\)/);
    assert.throws(() => r.reserve('vm-a'), /VM vm-a has 2 streams open/);
    ports[0]?.();
    ports[0]?.(); // giving back twice gives back once
    r.reserve('vm-c', 'port');
    assert.throws(() => r.reserve('vm-c', 'port'), /per host/);
    for (const give of streams) give();
    r.reserve('vm-c');
  });
});
