import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Forky, ForkyError, type SelfForkPolicy, type Vm } from '@forky/sdk';

/**
 * `node examples/dist/self-fork/main.js [--items "2 3 5 8 13"] [--target 13] [--levels 2] [--max-alive N]`: boots
 * one VM whose guest may fork itself within a budget that fits the search, copies search.sh in,
 * starts it, and prints what its root joined. The search forks and joins inside the guest: this
 * runner only watches for the answer.
 */
const { values } = parseArgs({
  options: {
    items: { type: 'string', default: '2 3 5 8 13' },
    target: { type: 'string', default: '13' },
    levels: { type: 'string', default: '2' },
    /** Smaller than the tree: forks are refused and those VMs search their branch themselves. */
    'max-alive': { type: 'string' },
    image: { type: 'string', default: 'tiny' },
    server: { type: 'string' },
  },
});
const items = values.items.trim();
const target = Number(values.target);
const levels = Number(values.levels);
if (!/^\d{1,4}( \d{1,4}){0,11}$/.test(items)) throw new RangeError('--items: 1 to 12 numbers, space separated');
if (!Number.isInteger(target) || target < 0 || target > 100_000) throw new RangeError('--target: 0 to 100000');
if (!Number.isInteger(levels) || levels < 1 || levels > 3) throw new RangeError('--levels: 1 to 3 (2^levels leaves, each a VM)');

// Two children per branch point, `levels` generations deep, the whole binary tree alive at once
// (a parent waits for its children): the budget is exactly what the search needs, no more.
const maxAlive = values['max-alive'] === undefined ? 2 ** (levels + 1) - 1 : Number(values['max-alive']);
if (!Number.isInteger(maxAlive) || maxAlive < 2 || maxAlive > 15) throw new RangeError('--max-alive: 2 to 15');
const policy: SelfForkPolicy = { maxChildren: 2, maxDepth: levels - 1, maxAlive };
/** How long the search may take under TCG before the runner gives up. */
const SEARCH_MS = 10 * 60_000;

const script = await readFile(new URL('../../self-fork/search.sh', import.meta.url));
const forky = await Forky.connect(values.server ? { servers: values.server } : {});
let root: Vm | undefined;
try {
  const t0 = performance.now();
  // A TTL under the whole tree: children inherit it, so a search killed midway leaves nothing for long.
  root = await forky.vms.create({ image: values.image, memMiB: 128, selfFork: policy, ttl: '15m', labels: { example: 'self-fork' } });
  await root.files.write('/tmp/search.sh', script);
  // In a session of its own: the fork hands the VM to a new process, which would end an exec in flight.
  await root.exec(`ITEMS='${items}' TARGET=${target} LEVELS=${levels} setsid sh /tmp/search.sh </dev/null >/tmp/search.out 2>&1 &`);
  const out = await answer(root);
  process.stdout.write(out);
  process.stdout.write(`${((performance.now() - t0) / 1000).toFixed(1)} s, policy ${JSON.stringify(policy)}\n`);
} finally {
  await root?.destroy().catch(() => undefined);
  await forky.close();
}

/** The root's output once it says `done`. Polled: nothing tells the host a guest script ended. */
async function answer(vm: Vm): Promise<string> {
  const deadline = Date.now() + SEARCH_MS;
  while (Date.now() < deadline) {
    // Refused while the root is frozen for one of its forks (INVALID_STATE): asked again.
    const out = await vm.files.readText('/tmp/search.out').catch((e: unknown) => {
      if (e instanceof ForkyError && (e.code === 'INVALID_STATE' || e.code === 'NOT_FOUND')) return '';
      throw e;
    });
    if (/^done$/m.test(out)) return out;
    await sleep(500);
  }
  throw new Error(`no answer from ${vm.id} within ${SEARCH_MS / 1000} s`);
}
