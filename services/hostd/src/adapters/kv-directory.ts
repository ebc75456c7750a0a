import type { KV } from '@nats-io/kv';
import type { Directory } from '../domain/ports.js';

/** The locator KV bucket: `vm.<id>` / `snap.<id>` -> `{ host }`. */
export class KvDirectory implements Directory {
  constructor(
    private readonly kv: KV,
    private readonly hostId: string,
  ) {}

  async register(kind: 'vm' | 'snap', id: string): Promise<void> {
    await this.kv.put(`${kind}.${id}`, JSON.stringify({ host: this.hostId }));
  }

  async unregister(kind: 'vm' | 'snap', id: string): Promise<void> {
    await this.kv.delete(`${kind}.${id}`);
  }
}
