/**
 * hostd's dry-run runtime, local stores and engine parts, as tests reach them: through the
 * package's internal face (`@forky/hostd/internal`, services/hostd/src/internal.ts), never by file.
 */
export {
  DryRunLayerStore,
  DryRunRuntime,
  FileRecordStore,
  Layout,
  LocalAppLayers,
  LocalSnapshotStore,
  ProcHostStats,
} from '@forky/hostd/internal';
