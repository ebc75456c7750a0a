import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Egress, NetworkPolicy, VmNetworkRequest, parseEgressRule } from '@forky/contract';
import { egressText, parseEgress } from '@forky/cli';

describe('egress policy: the contract and the CLI flag', () => {
  it('parses addresses, blocks and ports, IPv6 in brackets when a port follows', () => {
    assert.deepEqual(parseEgressRule('203.0.113.7'), { family: 4, addr: '203.0.113.7', prefix: 32 });
    assert.deepEqual(parseEgressRule('10.1.0.0/16:443'), { family: 4, addr: '10.1.0.0', prefix: 16, port: 443 });
    assert.deepEqual(parseEgressRule('2001:db8::/32'), { family: 6, addr: '2001:db8::', prefix: 32 });
    assert.deepEqual(parseEgressRule('[2001:db8::1]:22'), { family: 6, addr: '2001:db8::1', prefix: 128, port: 22 });
  });

  it('refuses names, bad prefixes and ports, saying which', () => {
    for (const [entry, why] of [
      ['example.com:443', /names are not taken/],
      ['10.0.0.0/33', /longer than 32/],
      ['1.2.3.4:0', /not in 1\.\.65535/],
      ['1.2.3.4:99999', /not in 1\.\.65535/],
      ['[::1]:x', /not an IPv4 or IPv6/],
      ['1.2.3.4/8/8', /more than one/],
    ] as const)
      assert.match(String(parseEgressRule(entry)), why, entry);
  });

  it('policies: none, internet (the default), allow-lists with DNS on unless said; strict and bounded', () => {
    assert.deepEqual(NetworkPolicy.parse({}), { egress: 'internet' });
    assert.deepEqual(Egress.parse({ allow: ['10.0.0.1'] }), { allow: ['10.0.0.1'], dns: true });
    assert.equal(Egress.safeParse('all').success, false);
    assert.equal(Egress.safeParse({ allow: [] }).success, false);
    assert.equal(Egress.safeParse({ allow: Array.from({ length: 65 }, () => '10.0.0.1') }).success, false);
    assert.equal(Egress.safeParse({ allow: ['10.0.0.1'], dns: true, extra: 1 }).success, false);
    const bad = VmNetworkRequest.safeParse({ id: 'vm-abcdefabcdef', network: { egress: { allow: ['example.com'] } } });
    assert.equal(bad.success, false);
    assert.deepEqual(bad.error?.issues[0]?.path, ['network', 'egress', 'allow', 0]);
  });

  it('the CLI flag gives the same policies and a clear error', () => {
    assert.equal(parseEgress('none'), 'none');
    assert.equal(parseEgress('internet'), 'internet');
    assert.deepEqual(parseEgress('10.0.0.0/8:443,[fd00::1]:53', false), { allow: ['10.0.0.0/8:443', '[fd00::1]:53'], dns: false });
    assert.throws(() => parseEgress('example.com'), /names are not taken/);
    assert.equal(egressText({ allow: ['10.0.0.0/8'], dns: false }), '10.0.0.0/8 (no DNS)');
  });
});
