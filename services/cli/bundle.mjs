// The `forky` CLI as one entry file, dist/main.js, and chunks beside it that its commands import
// when they run (npm run build, after tsc -b). A process then opens 2–5 files instead of ~40 (light
// commands) or ~370 (any request: the SDK, NATS, zod), which is most of its start-up on Node 20.
// dist/index.js and the rest stay tsc's own: the library face and the tests use them. A later
// `tsc -b` that re-emits main.js puts tsc's own back: slower to start, the same program.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, 'dist');
const CHUNK = /^chunk-[A-Z0-9]+\.js(\.map)?$/;
/** Which sources each output file holds: cli-startup.test.ts checks what a command loads through it. */
const INPUTS = path.join(dist, 'bundle-inputs.json');

const { metafile, outputFiles } = await build({
  entryPoints: { main: path.join(here, 'src', 'main.ts') },
  // bundle-inputs.json names sources from the repository's root, wherever this runs from.
  absWorkingDir: path.resolve(here, '..', '..'),
  outdir: dist,
  // In dist/ itself, beside main.js: paths.ts finds the repository three levels above its file.
  chunkNames: 'chunk-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // msgpackr loads a native addon by a computed path, pino starts workers from its files: both stay packages.
  external: ['msgpackr', 'pino'],
  // The CommonJS packages bundled (commander, tweetnacl…) require node's modules.
  banner: { js: "import { createRequire as forkyRequire } from 'node:module'; const require = forkyRequire(import.meta.url);" },
  sourcemap: true,
  logLevel: 'warning',
  metafile: true,
  write: false,
});

// A CLI started while this runs (another shell, a test) finds a whole bundle, old or new: chunks
// first (named by content, so no file in use changes), then each entry file renamed into place,
// then the old chunks go.
const written = new Set(outputFiles.map((f) => path.basename(f.path)));
const put = (f) => {
  const tmp = `${f.path}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, f.contents, { mode: f.path.endsWith('main.js') ? 0o755 : 0o644 });
  fs.renameSync(tmp, f.path);
};
for (const f of outputFiles) if (CHUNK.test(path.basename(f.path))) put(f);
for (const f of outputFiles) if (!CHUNK.test(path.basename(f.path))) put(f);
for (const f of fs.readdirSync(dist)) if (CHUNK.test(f) && !written.has(f)) fs.rmSync(path.join(dist, f), { force: true });

const inputs = Object.fromEntries(
  Object.entries(metafile.outputs)
    .filter(([out]) => out.endsWith('.js'))
    .map(([out, o]) => [path.basename(out), Object.keys(o.inputs)]),
);
fs.writeFileSync(INPUTS, JSON.stringify(inputs, null, 1) + '\n');
