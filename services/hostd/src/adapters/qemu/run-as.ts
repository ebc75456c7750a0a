import fs from 'node:fs/promises';
import path from 'node:path';
import { ForkyError, type Logger } from '@forky/base';

/** The unprivileged user QEMU drops to after it has opened its files (`-runas`). */
export interface RunAs {
  user: string;
  uid: number;
  gid: number;
}

/** The user `auto` looks for; deploy/setup.sh makes it. */
export const DEFAULT_QEMU_USER = 'forky-qemu';

/** A user's uid and gid from /etc/passwd (Node has no getpwnam); undefined if there is none. */
export async function lookupUser(user: string, passwd = '/etc/passwd'): Promise<RunAs | undefined> {
  const text = await fs.readFile(passwd, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [name, , uid, gid] = line.split(':');
    if (name === user && uid && gid) return { user, uid: Number(uid), gid: Number(gid) };
  }
  return undefined;
}

/** The first of `dir` and its ancestors that `uid` cannot pass through (no search permission), if any. */
async function blockedAncestor(dir: string, who: RunAs): Promise<string | undefined> {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const st = await fs.stat(d);
    const bit = st.uid === who.uid ? 0o100 : st.gid === who.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) return d;
    if (d === path.dirname(d)) return undefined;
  }
}

/**
 * Decides whom QEMU runs as. `none`: hostd's own user. A name: that user, or a clear error.
 * `auto`: `forky-qemu` where the host allows: hostd is root (only root can switch users), the
 * user exists, and it can reach the data and RAM directories (QEMU makes sockets and writes
 * device state there after dropping root). Otherwise QEMU runs as hostd's user, and the log says why.
 */
export async function resolveRunAs(setting: string, dirs: readonly string[], log: Logger): Promise<RunAs | undefined> {
  if (setting === 'none') return undefined;
  const auto = setting === 'auto';
  const refuse = (why: string): undefined => {
    if (!auto) throw new ForkyError('BAD_REQUEST', `qemu.runAs ${setting}: ${why}`, { details: { field: 'qemu.runAs' } });
    log.warn(`QEMU runs as hostd's own user: ${why}`);
    return undefined;
  };
  if (process.getuid?.() !== 0) return refuse('hostd is not root, so it cannot start QEMU as another user');
  const user = auto ? DEFAULT_QEMU_USER : setting;
  const who = await lookupUser(user);
  if (!who) return refuse(`there is no user ${user} (deploy/setup.sh makes ${DEFAULT_QEMU_USER})`);
  if (who.uid === 0) return refuse(`${user} is root`);
  for (const dir of dirs) {
    const blocked = await blockedAncestor(dir, who);
    if (blocked) return refuse(`${user} cannot reach ${dir} (${blocked} has no search permission for it)`);
  }
  log.info({ user, uid: who.uid }, 'QEMU drops to an unprivileged user after start');
  return who;
}

/** Gives a directory QEMU writes into after dropping root (sockets, device state) to its user. */
export async function handOver(dir: string, who: RunAs | undefined): Promise<void> {
  if (who) await fs.chown(dir, who.uid, who.gid);
}
