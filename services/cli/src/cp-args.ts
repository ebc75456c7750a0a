import { ForkyError } from '@forky/base';
import { VmId } from '@forky/contract';

/** One side of `forky cp`: a path in a VM (`VM:/abs/path`), a local path, or `-` (stdin or stdout). */
export type CpSide = { remote: true; vm: string; path: string } | { remote: false; path: string };

/** Bad input found in an action, not by commander: BAD_REQUEST, so it exits 2 as a usage error does. */
const bad = (msg: string): ForkyError => new ForkyError('BAD_REQUEST', msg);

export function parseCpSide(s: string): CpSide {
  const m = /^([^:/]+):(.*)$/.exec(s);
  if (!m || !VmId.safeParse(m[1]).success) return { remote: false, path: s };
  const p = m[2] as string;
  if (!p.startsWith('/')) throw bad(`${s}: the path in the VM must be absolute (VM:/path)`);
  return { remote: true, vm: m[1] as string, path: p };
}

/** A copy into the VM (`in`) or out of it: exactly one side is `VM:/path`. */
export interface CpPlan {
  direction: 'in' | 'out';
  vm: string;
  remote: string;
  /** `-`: stdin (in) or stdout (out). */
  local: string;
}

export function parseCp(src: string, dst: string): CpPlan {
  const a = parseCpSide(src);
  const b = parseCpSide(dst);
  if (a.remote && b.remote) throw bad('cp: exactly one side is VM:/path; both are (copy through the host)');
  if (!a.remote && !b.remote) throw bad('cp: exactly one side is VM:/path (a VM id, a colon, an absolute path); neither is');
  if (a.remote) return { direction: 'out', vm: a.vm, remote: a.path, local: b.path };
  if (b.remote) return { direction: 'in', vm: b.vm, remote: b.path, local: a.path };
  throw new Error('unreachable');
}
