/** What a batch does for each member, and with all of them. */
export interface BatchSteps {
  /** Before the transaction (the VM's cgroup made); true when it made something `undo` should take back. */
  prepare(vmId: string): Promise<boolean>;
  /** One nft transaction: all of it takes effect, or none. */
  run(script: string): Promise<void>;
  /** After a refusal, what `prepare` made is taken back. */
  undo(vmId: string): Promise<void>;
}

interface Member {
  vmId: string;
  script: string;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * Filter applies queued one after another join one nft transaction: a fork of 16 children made 16
 * nft processes in a row (~25 ms each, issue 21 point 4). A batch takes new members until it starts
 * or until any other change is queued behind it (`close`), so the order of changes to one VM is
 * kept. A refused transaction is run again member by member, so each apply gets its own outcome.
 */
export class ApplyBatches {
  #open: Member[] | undefined;

  constructor(
    /** The filter's one-change-at-a-time queue. */
    private readonly enqueue: (fn: () => Promise<void>) => Promise<void>,
    private readonly steps: BatchSteps,
  ) {}

  /** Something else was queued: the next apply starts a new batch behind it. */
  close(): void {
    this.#open = undefined;
  }

  add(vmId: string, script: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let batch = this.#open;
      if (!batch) {
        const fresh: Member[] = [];
        this.#open = batch = fresh;
        void this.enqueue(() => this.#run(fresh));
      }
      batch.push({ vmId, script, resolve, reject });
    });
  }

  async #run(batch: Member[]): Promise<void> {
    if (this.#open === batch) this.#open = undefined;
    const ready: Member[] = [];
    const made = new Set<Member>();
    for (const m of batch) {
      try {
        if (await this.steps.prepare(m.vmId)) made.add(m);
        ready.push(m);
      } catch (e) {
        m.reject(e);
      }
    }
    const fail = async (m: Member, e: unknown): Promise<void> => {
      if (made.has(m)) await this.steps.undo(m.vmId).catch(() => undefined);
      m.reject(e);
    };
    if (ready.length === 0) return;
    try {
      await this.steps.run(ready.map((m) => m.script).join(''));
      for (const m of ready) m.resolve();
      return;
    } catch (e) {
      if (ready.length === 1) return fail(ready[0] as Member, e);
    }
    for (const m of ready) {
      try {
        await this.steps.run(m.script);
        m.resolve();
      } catch (e) {
        await fail(m, e);
      }
    }
  }
}
