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

  vmsDir(): string {
    return safeJoin(this.dataDir, 'vms');
  }
  vmRamDir(): string {
    return safeJoin(this.ramDir, 'vms');
  }
  snapshotsDir(): string {
    return safeJoin(this.dataDir, 'snapshots');
  }
  snapshotRamDir(): string {
    return safeJoin(this.ramDir, 'snapshots');
  }
  /** The outcome of a finished request with an idempotency key (keys are [A-Za-z0-9_-]). */
  requestRecord(key: string): string {
    return safeJoin(this.dataDir, 'requests', `${key}.json`);
  }
  requestsDir(): string {
    return safeJoin(this.dataDir, 'requests');
  }
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
  appsDir(): string {
    return safeJoin(this.dataDir, 'apps');
  }
  /** An app layer, by the sha256 of its image (checked by the contract: 64 hex digits). */
  appLayer(digest: string): string {
    return safeJoin(this.dataDir, 'apps', `${digest}.ext4`);
  }
  /** Images fetched for snapshots, by the hex of their id (images.ts builds the paths below it). */
  imagesByIdDir(): string {
    return safeJoin(this.dataDir, 'images', 'by-id');
  }
  layer(id: string): string {
    return safeJoin(this.dataDir, 'layers', `${id}.qcow2`);
  }
}
