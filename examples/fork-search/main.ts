import { parseArgs } from 'node:util';
import { Forky } from '@forky/sdk';
import { renderTree, search } from './search.js';

/** `node examples/dist/fork-search/main.js [--children N] [--length L] [--image I]` against the local cluster. */
const { values } = parseArgs({
  options: {
    children: { type: 'string', default: '4' },
    length: { type: 'string', default: '3' },
    image: { type: 'string', default: 'tiny' },
    server: { type: 'string' },
  },
});
const forky = await Forky.connect(values.server ? { servers: values.server } : {});
try {
  const t0 = performance.now();
  const r = await search(forky, {
    children: Number(values.children),
    length: Number(values.length),
    image: values.image,
    onRound: (n, tried) => process.stderr.write(`round ${n}: ${tried.map((t) => `${t.guess}=${t.score}`).join(' ')}\n`),
  });
  process.stdout.write(`${renderTree(r.root)}\n`);
  process.stdout.write(`found ${r.found} in ${r.rounds} rounds of forks, ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
} finally {
  await forky.close();
}
