import type { EngineDeps, LayerStore, SnapshotStore, VmRuntime } from '@forky/hostd';

/**
 * hostd's dry-run runtime and local stores, which `@forky/hostd`'s index does not export yet
 * (issue 16 item 5 gives tests an `internal.ts` for them). Until then they are loaded from the
 * package's build by file URL, here only, with the port types the index does export; switch this
 * one file to `@forky/hostd/internal` then. A moved file fails here, by name, not in a test.
 */
type Layout = EngineDeps['layout'];
type AppLayerStore = EngineDeps['appLayers'];

const dist = new URL('.', import.meta.resolve('@forky/hostd'));

async function load<T>(file: string, name: string): Promise<T> {
  const mod = (await import(new URL(file, dist).href)) as Record<string, unknown>;
  if (typeof mod[name] !== 'function') throw new Error(`@forky/hostd has no ${name} in ${file} any more: update test/helpers/hostd-internals.ts`);
  return mod[name] as T;
}

export const Layout = await load<new (dataDir: string, ramDir: string) => Layout>('layout.js', 'Layout');
export const DryRunRuntime = await load<new () => VmRuntime>('adapters/dry-run.js', 'DryRunRuntime');
export const DryRunLayerStore = await load<new (layout: Layout) => LayerStore>('adapters/dry-run.js', 'DryRunLayerStore');
export const LocalSnapshotStore = await load<new (layout: Layout) => SnapshotStore>('adapters/store/local-snapshots.js', 'LocalSnapshotStore');
export const LocalAppLayers = await load<new (layout: Layout) => AppLayerStore>('adapters/store/app-layers.js', 'LocalAppLayers');
