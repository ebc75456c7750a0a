import { safeJoin } from '@forky/base';

/**
 * Where everything of one host lives. Ids come from requests, so every path is built with
 * safeJoin: nothing a request says can point outside dataDir or ramDir.
 */
export class Layout {
  constructor(
    readonly dataDir: string,
    readonly ramDir: string,
  ) {}

  vmDir(id: string): string {
    return safeJoin(this.dataDir, 'vms', id);
  }
  vmRecord(id: string): string {
    return safeJoin(this.dataDir, 'vms', id, 'vm.json');
  }
  vmRam(id: string): string {
    return safeJoin(this.ramDir, 'vms', `${id}.ram`);
  }
  snapshotDir(id: string): string {
    return safeJoin(this.dataDir, 'snapshots', id);
  }
  snapshotRam(id: string): string {
    return safeJoin(this.ramDir, 'snapshots', `${id}.ram`);
  }
  layersDir(): string {
    return safeJoin(this.dataDir, 'layers');
  }
  layer(id: string): string {
    return safeJoin(this.dataDir, 'layers', `${id}.qcow2`);
  }
}
