import type { KV, KvEntry } from '@nats-io/kv';
import { NotFoundError, type Logger } from '@forky/base';
import { LocatorEntry, entryValue, isReadableKey, logBadEntry, retryTransient } from '@forky/bus';
import { LineageNode } from '@forky/contract';

/**
 * What the scheduler reads of the directory hosts write (the locator and the lineage). Any host
 * may write either bucket, so each entry is checked: one that is not valid (not JSON, the wrong
 * shape, a key the client cannot read, a node filed under another id) is logged and is absent.
 */

/** The host a locator entry names, or undefined (absent, deleted or not valid). */
export function locatorHost(entry: KvEntry | null, log: Logger): string | undefined {
  return entryValue(LocatorEntry, entry, log)?.host;
}

/** What a locator key names: a VM or a snapshot. */
export type Located = 'vm' | 'snap';

/** The kind of a fork source, by its id. */
export function sourceKind(source: string): Located {
  return source.startsWith('vm-') ? 'vm' : 'snap';
}

/** The host that holds a VM or snapshot, or NOT_FOUND. */
export async function locate(kv: KV, kind: Located, id: string, log: Logger): Promise<string> {
  // An entry that is not valid (any host may write the locator) is as good as none.
  const e = await retryTransient('locator get', () => kv.get(`${kind}.${id}`), { log });
  const host = locatorHost(e, log);
  if (!host) throw new NotFoundError(kind === 'vm' ? 'VM' : 'snapshot', id);
  return host;
}

/** Every valid node of the lineage bucket, in no order. */
export async function lineageNodes(kv: KV, log: Logger): Promise<LineageNode[]> {
  const out: LineageNode[] = [];
  for await (const key of await kv.keys()) {
    if (!isReadableKey(key)) {
      logBadEntry(log, `lineage/${key}`, 'not a key the client can read', key);
      continue;
    }
    const node = entryValue(LineageNode, await kv.get(key), log);
    if (node && node.id === key) out.push(node);
    else if (node) logBadEntry(log, `lineage/${key}`, `a node of ${node.id} filed under another key`, JSON.stringify(node));
  }
  return out;
}
