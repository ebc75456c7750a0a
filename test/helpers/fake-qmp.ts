import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export type Reply = { return: unknown } | { error: { class: string; desc: string } } | 'silent' | 'garbage' | 'hangup';

/**
 * A QMP server of our own on a unix socket: greets, negotiates, and answers each command with
 * what the test scripted. Lets the client's edge cases (errors, silence, garbage, hang-ups) be hit.
 */
export class FakeQmpServer {
  readonly received: Array<{ execute: string; id?: string; arguments?: unknown }> = [];
  readonly sockets = new Set<net.Socket>();
  #server = net.createServer((s) => this.#serve(s));
  #script = new Map<string, Reply>();

  private constructor(readonly path: string) {}

  static async start(): Promise<FakeQmpServer> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fqmp-'));
    const f = new FakeQmpServer(path.join(dir, 'qmp.sock'));
    await new Promise<void>((r) => f.#server.listen(f.path, r));
    return f;
  }

  on(command: string, reply: Reply): void {
    this.#script.set(command, reply);
  }

  emit(event: string, data: Record<string, unknown> = {}): void {
    for (const s of this.sockets) s.write(JSON.stringify({ event, data, timestamp: { seconds: 1, microseconds: 0 } }) + '\r\n');
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
    await fs.rm(path.dirname(this.path), { recursive: true, force: true });
  }

  #serve(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.write(
      JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] } }) + '\r\n',
    );
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id?: string };
        buf = buf.slice(nl + 1);
        this.received.push(msg);
        const reply = msg.execute === 'qmp_capabilities' ? { return: {} } : (this.#script.get(msg.execute) ?? { return: {} });
        if (reply === 'silent') continue;
        if (reply === 'garbage') s.write('this is not json\r\n');
        else if (reply === 'hangup') s.destroy();
        else s.write(JSON.stringify({ ...reply, id: msg.id }) + '\r\n');
      }
    });
  }
}
