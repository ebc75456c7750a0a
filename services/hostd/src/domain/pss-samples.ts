/** A sample is read again after this long: Pss is a page-table walk (~1 ms for a 256 MiB guest). */
export const PSS_MAX_AGE_MS = 10_000;
/** Stale samples read again per report, oldest first: a host of 100 VMs is refreshed over several reports. */
export const PSS_REFRESH_PER_REPORT = 8;

interface Sample {
  mib: number;
  at: number;
}

/**
 * The Pss of each VM's QEMU process, for heartbeats and `host.info`. Every report used to read
 * every VM's smaps_rollup; a fork of 100 children sends a beat every 100 ms, and under CPU
 * contention the beats then came more than 6 s apart and the scheduler called the host down.
 * A VM never sampled is read at once; a stale one is read again a few per report.
 */
export class PssSamples {
  readonly #byPid = new Map<number, Sample>();

  async of(
    vms: Iterable<{ pid?: number | undefined; parentSnapshot?: string | undefined }>,
    read: (pid: number) => Promise<number>,
    now = Date.now(),
  ): Promise<Array<{ child: boolean; mib: number }>> {
    const list = [...vms];
    const live = new Set<number>();
    const fresh: number[] = [];
    const stale: Array<[number, number]> = [];
    for (const v of list) {
      if (!v.pid) continue;
      live.add(v.pid);
      const s = this.#byPid.get(v.pid);
      if (!s) fresh.push(v.pid);
      else if (now - s.at >= PSS_MAX_AGE_MS) stale.push([v.pid, s.at]);
    }
    stale.sort((a, b) => a[1] - b[1]);
    const due = [...fresh, ...stale.slice(0, PSS_REFRESH_PER_REPORT).map(([pid]) => pid)];
    await Promise.all(due.map(async (pid) => this.#byPid.set(pid, { mib: await read(pid), at: now })));
    for (const pid of this.#byPid.keys()) if (!live.has(pid)) this.#byPid.delete(pid);
    return list.map((v) => ({ child: !!v.parentSnapshot, mib: v.pid ? (this.#byPid.get(v.pid)?.mib ?? 0) : 0 }));
  }
}
