// Taking a VM's filter apart (a destroy, a sweep): scripts only, pure like egress-rules.ts.
import { names, q, vmCgroup, type Family, type HostFacts } from './egress-rules.js';

/** What of a VM's filter exists (from a listing), so removal names only what is there. */
export interface VmObjects {
  element: boolean;
  chain: boolean;
  refuse: boolean;
  counter: boolean;
}

/**
 * Removes the filters of `drop` and keeps only `keep`'s map elements: the map is refilled (in the
 * same transaction) because an element whose cgroup is gone can no longer be named by its path.
 */
export function sweepScript(facts: HostFacts, keep: string[], drop: Array<{ vmId: string; has: VmObjects }>): string {
  const t = facts.table;
  return [
    `flush map inet ${t} vms\n`,
    ...keep.map((id) => `add element inet ${t} vms { ${q(vmCgroup(facts, id))} : jump ${names(id).chain} }\n`),
    ...drop.map((d) => removeScript(facts, d.vmId, { ...d.has, element: false })),
  ].join('');
}

/** Makes sure a VM's objects exist (each `add` is a no-op if it does), so a removal after it cannot fail on a missing one. */
export function ensureScript(facts: HostFacts, vmId: string, element: boolean, fam: Family = 'inet'): string {
  const t = `${fam} ${facts.table}`;
  const n = names(vmId);
  return [
    `add counter ${t} ${n.counter}\n`,
    `add chain ${t} ${n.refuse}\n`,
    `add chain ${t} ${n.chain}\n`,
    element ? `add element ${t} vms { ${q(vmCgroup(facts, vmId))} : jump ${n.chain} }\n` : '',
  ].join('');
}

/** Removes a VM's filter: the element first (its packets then meet the host chain's refusal), then the rest. */
export function removeScript(facts: HostFacts, vmId: string, has: VmObjects, fam: Family = 'inet'): string {
  const t = `${fam} ${facts.table}`;
  const n = names(vmId);
  return [
    has.element ? `delete element ${t} vms { ${q(vmCgroup(facts, vmId))} }` : '',
    has.chain ? `flush chain ${t} ${n.chain}` : '',
    has.chain ? `delete chain ${t} ${n.chain}` : '',
    has.refuse ? `flush chain ${t} ${n.refuse}` : '',
    has.refuse ? `delete chain ${t} ${n.refuse}` : '',
    has.counter ? `delete counter ${t} ${n.counter}` : '',
  ]
    .filter(Boolean)
    .map((l) => l + '\n')
    .join('');
}
