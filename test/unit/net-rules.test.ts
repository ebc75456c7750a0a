import { netFilter as net } from '@forky/hostd/internal';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '@forky/base';
import type { Egress } from '@forky/contract';

// The net adapter is not (yet) on @forky/hostd/internal: loaded from the same package's build.
const { applyScript, hostKey, openNetworkFilter, parseBlock, RestrictFilter, safeName, tableScript, toBlock, vmRules } = net;

const facts = {
  table: 'forky_0123456789',
  hostCgroup: 'unified/forky/0123456789',
  hostLevel: 2,
  resolvers: ['10.255.255.53', 'fd00::53'],
  nats: ['192.0.2.2', '2001:db8::4'],
  deny: ['203.0.113.7/24', '198.51.100.9:25', '[2001:db8:1::/48]:443'],
};
const internet: Egress = 'internet';
const allow = (entries: string[], dns = true): Egress => ({ allow: entries, dns });
const idx = (rules: string[], re: RegExp): number => rules.findIndex((r) => re.test(r));

describe('net rules: policy → nft script', () => {
  it('none refuses everything, DNS included', () => {
    assert.deepEqual(vmRules(facts, 'vm-abc', 'none'), ['goto rf_vm_abc']);
  });

  it('internet: DNS first, then the floor, then non-public blocks, then accept', () => {
    const r = vmRules(facts, 'vm-abc', internet);
    const dns4 = idx(r, /th dport 53 ip daddr @dns4 accept$/);
    const dns6 = idx(r, /th dport 53 ip6 daddr @dns6 accept$/);
    const local = idx(r, /^fib daddr type \{ local, broadcast, multicast \} goto rf_vm_abc$/);
    const floor4 = idx(r, /^ip daddr @floor4 goto rf_vm_abc$/);
    const floor6 = idx(r, /^ip6 daddr @floor6 goto rf_vm_abc$/);
    const special4 = idx(r, /^ip daddr @special4 goto/);
    const special6 = idx(r, /^ip6 daddr @special6 goto/);
    for (const i of [dns4, dns6, local, floor4, floor6, special4, special6]) assert.ok(i >= 0, r.join('\n'));
    assert.ok(dns4 < local && dns6 < local && local < floor4 && floor6 < special4 && special6 < r.length - 1);
    assert.equal(r.at(-1), 'accept');
  });

  it('the floor holds the operator’s deny entries (a port-limited one as a rule) and the NATS servers', () => {
    const t = tableScript(facts);
    const floor4 = /add element inet forky_0123456789 floor4 \{ ([^}]*) \}/.exec(t)?.[1] ?? '';
    const floor6 = /add element inet forky_0123456789 floor6 \{ ([^}]*) \}/.exec(t)?.[1] ?? '';
    for (const b of ['127.0.0.0/8', '0.0.0.0/8', '169.254.0.0/16', '224.0.0.0/4', '240.0.0.0/4', '192.0.2.2/32', '203.0.113.0/24'])
      assert.ok(floor4.includes(b), `${b} in floor4: ${floor4}`);
    for (const b of ['::1/128', '::/128', '::ffff:0:0/96', 'fe80::/10', 'ff00::/8', 'fd00:ec2::254/128', '2001:db8:0:0:0:0:0:4/128'])
      assert.ok(floor6.includes(b), `${b} in floor6: ${floor6}`);
    assert.ok(!floor4.includes('198.51.100.9'), 'a deny entry with a port is no set element');
    const r = vmRules(facts, 'vm-abc', allow(['198.51.100.0/24']));
    const ported = idx(r, /^ip daddr 198\.51\.100\.9\/32 meta l4proto \{ tcp, udp \} th dport 25 goto rf_vm_abc$/);
    const ported6 = idx(r, /^ip6 daddr 2001:db8:1:0:0:0:0:0\/48 meta l4proto \{ tcp, udp \} th dport 443 goto rf_vm_abc$/);
    const allowed = idx(r, /^ip daddr 198\.51\.100\.0\/24 accept$/);
    assert.ok(ported >= 0 && ported6 >= 0 && allowed > ported && allowed > ported6, r.join('\n'));
    assert.match(t, /socket cgroupv2 level 2 "unified\/forky\/0123456789" goto host/);
    assert.match(t, /typeof socket cgroupv2 level 3 : verdict/);
    assert.match(t, /add rule inet forky_0123456789 host counter name refused_unknown reject/);
  });

  it('allow-list: floor before every allow, host bits masked, ports, everything else refused', () => {
    const r = vmRules(facts, 'vm-abc', allow(['10.1.2.3/8', '192.168.7.9', '8.8.8.8:53', '[2001:db8::77/32]:443', 'fd12:3456::9/16']));
    const floorAt = idx(r, /@floor6/);
    const at = (re: RegExp): number => {
      const i = idx(r, re);
      assert.ok(i > floorAt, `${re} after the floor:\n${r.join('\n')}`);
      return i;
    };
    at(/^ip daddr 10\.0\.0\.0\/8 accept$/);
    at(/^ip daddr 192\.168\.7\.9\/32 accept$/);
    at(/^ip daddr 8\.8\.8\.8\/32 meta l4proto \{ tcp, udp \} th dport 53 accept$/);
    at(/^ip6 daddr 2001:db8:0:0:0:0:0:0\/32 meta l4proto \{ tcp, udp \} th dport 443 accept$/);
    at(/^ip6 daddr fd12:0:0:0:0:0:0:0\/16 accept$/);
    assert.equal(r.at(-1), 'goto rf_vm_abc');
    assert.ok(!r.some((x) => /special/.test(x)), 'an allow-list is not the internet policy');
  });

  it('DNS on or off', () => {
    assert.ok(vmRules(facts, 'vm-a', allow(['1.1.1.1'], true)).some((x) => /dport 53 ip daddr @dns4 accept/.test(x)));
    assert.ok(!vmRules(facts, 'vm-a', allow(['1.1.1.1'], false)).some((x) => /@dns/.test(x)));
    assert.match(tableScript(facts), /add element inet forky_0123456789 dns4 \{ 10\.255\.255\.53\/32 \}/);
    assert.match(tableScript(facts), /add element inet forky_0123456789 dns6 \{ fd00:0:0:0:0:0:0:53\/128 \}/);
    assert.doesNotMatch(tableScript({ ...facts, resolvers: [] }), /add element [^\n]* dns4/);
  });

  it('apply is one replace of the chain, its refusals counted, and the map element', () => {
    const s = applyScript(facts, 'vm-x9', internet).split('\n');
    const flush = s.indexOf('flush chain inet forky_0123456789 vm_vm_x9');
    assert.ok(flush >= 0 && s.slice(flush + 1).some((l) => l.startsWith('add rule inet forky_0123456789 vm_vm_x9 ')));
    assert.ok(s.includes('add counter inet forky_0123456789 refused_vm_x9'));
    assert.ok(s.includes('add rule inet forky_0123456789 rf_vm_x9 counter name refused_vm_x9'));
    assert.ok(s.includes('add rule inet forky_0123456789 rf_vm_x9 meta l4proto tcp reject with tcp reset'));
    assert.equal(s.filter((l) => l.startsWith('add element inet forky_0123456789 vms')).length, 1);
    assert.ok(s.includes('add element inet forky_0123456789 vms { "unified/forky/0123456789/vm-x9" : jump vm_vm_x9 }'));
  });

  it('names are safe: ids are [a-z0-9-], anything else is refused before any script', () => {
    assert.equal(safeName('vm-0a1b'), 'vm_0a1b');
    for (const bad of ['vm_x', 'VM-1', 'vm-1"; flush ruleset', 'vm-1/../x', '', '-x', 'a'.repeat(70)])
      assert.throws(
        () => applyScript(facts, bad, 'none'),
        (e: Error & { code?: string }) => e.code === 'BAD_REQUEST',
        bad,
      );
    assert.throws(() => vmRules({ ...facts, deny: ['example.com'] }, 'vm-a', internet), /network\.deny/);
    assert.equal(hostKey('host-a').length, 10);
    assert.notEqual(hostKey('host-a'), hostKey('host-b'));
  });

  it('blocks: host bits masked, v4-mapped and compressed v6 expanded', () => {
    assert.equal(toBlock({ family: 4, addr: '172.16.200.1', prefix: 12 }).cidr, '172.16.0.0/12');
    assert.equal(toBlock({ family: 4, addr: '1.2.3.4', prefix: 0 }).cidr, '0.0.0.0/0');
    assert.equal(toBlock({ family: 6, addr: '2001:db8::1:2', prefix: 112 }).cidr, '2001:db8:0:0:0:0:1:0/112');
    assert.equal(toBlock({ family: 6, addr: '::ffff:10.1.2.3', prefix: 120 }).cidr, '0:0:0:0:0:ffff:a01:200/120');
    assert.equal(toBlock({ family: 6, addr: '::', prefix: 128 }).cidr, '0:0:0:0:0:0:0:0/128');
    assert.deepEqual(parseBlock('[fd00::1]:443', 'x'), { family: 6, cidr: 'fd00:0:0:0:0:0:0:1/128', port: 443 });
  });

  it('without nftables only `none` is accepted, with the reason; filter "none" asks for nothing', async () => {
    const r = new RestrictFilter('no nft here');
    assert.equal(r.enforcement, 'qemu-restrict');
    assert.equal(r.scope(), undefined);
    await r.apply('vm-a', 'none');
    await assert.rejects(
      r.apply('vm-a', 'internet'),
      (e: Error & { code?: string; details?: { field?: string } }) =>
        e.code === 'BAD_REQUEST' &&
        e.details?.field === 'network.egress' &&
        e.message === `egress "internet" needs the host's nftables filter, which this host lacks: no nft here`,
    );
    await assert.rejects(r.apply('vm-a', allow(['1.1.1.1'])), /egress "allow" needs/);
    assert.equal(await r.refused(), undefined);
    const none = await openNetworkFilter({ hostId: 'h', natsServers: [], deny: [], mode: 'user', filter: 'none', log: silentLogger() });
    assert.equal(none.enforcement, 'qemu-restrict');
    assert.match(none.describe(), /network\.filter is 'none'/);
  });
});
