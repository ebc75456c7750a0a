import type { LineageNode } from '@forky/contract';

/**
 * The lineage as a terminal tree: each image, the snapshots of VMs booted from it, and below each
 * snapshot the ones taken of its children (or of the same VM later). A snapshot whose parent was
 * deleted hangs from its image, marked.
 */
export function renderTree(nodes: readonly LineageNode[]): string {
  if (nodes.length === 0) return '(no snapshots)\n';
  const ids = new Set(nodes.map((n) => n.id));
  const kids = new Map<string, LineageNode[]>();
  for (const n of nodes) {
    const parent = n.parent && ids.has(n.parent) ? n.parent : `image:${n.image}`;
    kids.set(parent, [...(kids.get(parent) ?? []), n]);
  }
  const lines: string[] = [];
  const walk = (key: string, prefix: string): void => {
    const list = kids.get(key) ?? [];
    list.forEach((n, i) => {
      const last = i === list.length - 1;
      const orphan = n.parent && !ids.has(n.parent) ? ` (parent ${n.parent} deleted)` : '';
      lines.push(`${prefix}${last ? '└── ' : '├── '}${n.id}  vm ${n.vm} on ${n.host}, ${n.createdAt}${orphan}`);
      walk(n.id, `${prefix}${last ? '    ' : '│   '}`);
    });
  };
  for (const image of [...new Set(nodes.map((n) => n.image))].sort()) {
    lines.push(`image ${image}`);
    walk(`image:${image}`, '');
  }
  return lines.join('\n') + '\n';
}
