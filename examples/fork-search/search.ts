import type { Duration, Forky, Vm } from '@forky/sdk';

/** One state the search reached: a VM that tried `candidate` on top of its parent's state. */
export interface Node {
  vm: string;
  /** The digit this child tried (none for the root). */
  candidate?: string;
  guess: string;
  score: number;
  /** Kept: its state is where the search went on from. */
  kept: boolean;
  children: Node[];
}

export interface SearchOptions {
  /** Children forked per round (each tries a different candidate). */
  children: number;
  /** Length of the secret the guest holds. */
  length: number;
  image?: string;
  memMiB?: number;
  /**
   * A net under the whole tree (default 15m): the root, and every child (they inherit it, counted
   * from their own start), is destroyed by its host after this even if the search dies midway.
   */
  ttl?: Duration;
  /** Told about each round as it ends. */
  onRound?: (round: number, tried: Node[]) => void;
}

export interface SearchResult {
  root: Node;
  /** The guest's secret, as the search found it through scores alone. */
  found: string;
  /** Forks made: one per round. */
  rounds: number;
}

const DIGITS = '0123456789';

/**
 * The guest holds a secret it never shows; it only scores a guess (how many leading digits are
 * right). The search boots one sandbox, prepares that state, then forks it: each child tries a
 * different next digit on top of the same memory and disk, the best child is kept and forked
 * again, the rest destroyed. A round where no child improves is forked again from the same
 * snapshot with the next digits: any snapshot can be forked again.
 */
export async function search(forky: Forky, o: SearchOptions): Promise<SearchResult> {
  if (!Number.isInteger(o.children) || o.children < 1 || o.children > 10) throw new RangeError('children must be 1 to 10');
  if (!Number.isInteger(o.length) || o.length < 1 || o.length > 8) throw new RangeError('length must be 1 to 8');
  const root = await forky.vms.create({ image: o.image ?? 'tiny', memMiB: o.memMiB ?? 256, ttl: o.ttl ?? '15m' });
  const made: Vm[] = [root];
  const snapshots: string[] = [];
  let rounds = 0;
  try {
    await prepare(root, o.length);
    const rootNode: Node = { vm: root.id, guess: '', score: 0, kept: true, children: [] };
    let node = rootNode;
    let current: Vm = root;
    while (node.score < o.length) {
      let improved: { vm: Vm; node: Node } | undefined;
      let from: string | undefined; // the snapshot of `current`, once taken
      for (let at = 0; at < DIGITS.length && !improved; at += o.children) {
        const digits = DIGITS.slice(at, at + o.children).split('');
        rounds++;
        const kids = from
          ? await forky.snapshots.fork(from, { count: digits.length })
          : await current.fork({ count: digits.length }).then((f) => {
              from = f.snapshot.id;
              snapshots.push(f.snapshot.id);
              return f.children;
            });
        made.push(...kids);
        const tried = await Promise.all(kids.map((k, i) => attempt(k, digits[i] as string)));
        node.children.push(...tried);
        o.onRound?.(rounds, tried);
        const best = tried.reduce((a, b) => (b.score > a.score ? b : a));
        for (const [i, t] of tried.entries()) {
          const vm = kids[i] as Vm;
          if (t === best && best.score > node.score) improved = { vm, node: t };
          else await vm.destroy();
        }
      }
      if (!improved) throw new Error(`no digit improved on ${JSON.stringify(node.guess)}: the guest's scorer is broken`);
      improved.node.kept = true;
      await current.destroy(); // its snapshot stays: its children resumed from it
      current = improved.vm;
      node = improved.node;
    }
    return { root: rootNode, found: node.guess, rounds };
  } finally {
    await Promise.all(made.map((v) => v.destroy().catch(() => undefined)));
    for (const s of snapshots.reverse()) await forky.snapshots.delete(s).catch(() => undefined);
  }
}

/** The sandbox's state before the search: a secret, and a scorer that reveals only a count. */
async function prepare(vm: Vm, length: number): Promise<void> {
  const scorer = [
    'g=$(cat /tmp/guess 2>/dev/null); s=$(cat /tmp/secret); n=0',
    'while [ $n -lt ${#g} ] && [ "$(echo "$g" | cut -c$((n+1)))" = "$(echo "$s" | cut -c$((n+1)))" ]; do n=$((n+1)); done',
    'echo $n',
  ].join('\n');
  await vm.files.write('/tmp/score.sh', scorer + '\n');
  const r = await vm.exec(`tr -dc 0-9 < /dev/urandom | head -c ${length} > /tmp/secret && : > /tmp/guess && chmod 600 /tmp/secret`);
  if (r.exitCode !== 0) throw new Error(`preparing the sandbox failed: ${r.stderr}`);
}

/** A child tries one more digit on top of the state it inherited, and is scored. */
async function attempt(vm: Vm, digit: string): Promise<Node> {
  const r = await vm.exec(`printf %s ${digit} >> /tmp/guess && cat /tmp/guess && echo && sh /tmp/score.sh`);
  const [guess = '', score = 'NaN'] = r.stdout.trim().split('\n');
  const n = Number(score);
  if (r.exitCode !== 0 || !Number.isInteger(n)) throw new Error(`scoring in ${vm.id} failed: ${r.stderr || r.stdout}`);
  return { vm: vm.id, candidate: digit, guess, score: n, kept: false, children: [] };
}

/** The explored tree, one line per state: `guess (score)`, the kept path marked. */
export function renderTree(root: Node): string {
  const lines = [`${root.vm}  (start)`];
  const walk = (n: Node, prefix: string): void =>
    n.children.forEach((c, i) => {
      const last = i === n.children.length - 1;
      lines.push(`${prefix}${last ? '└─' : '├─'} ${c.candidate}  ${c.guess.padEnd(8)} score ${c.score}${c.kept ? '  ← kept' : ''}`);
      walk(c, prefix + (last ? '   ' : '│  '));
    });
  walk(root, '');
  return lines.join('\n');
}
