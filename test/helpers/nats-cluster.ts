import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { withDeadline } from '@forky/base';
import { startNatsServer, type NatsServer } from '@forky/bus';

/** A port nothing listens on now (bound, read and released: the kernel does not hand it out again at once). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface TestCluster {
  /** The running node of each slot (undefined while killed). */
  nodes: Array<NatsServer | undefined>;
  names: string[];
  /** Every node's client URL, running or not: what a client is given to fail over between. */
  urls: string[];
  /** SIGKILL: the node dies as a crashed machine would, with no goodbye to its peers. */
  kill(i: number): Promise<void>;
  /** Starts a killed node again on its store, name and ports. */
  restart(i: number): Promise<void>;
  stop(): Promise<void>;
}

/** `n` nats-server nodes on loopback forming one JetStream cluster (each its own store dir). */
export async function startNatsCluster(n = 3): Promise<TestCluster> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-natscluster-'));
  const clientPorts: number[] = [];
  const routePorts: number[] = [];
  for (let i = 0; i < n; i++) {
    clientPorts.push(await freePort());
    routePorts.push(await freePort());
  }
  const names = clientPorts.map((_, i) => `node-${i + 1}`);
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`);
  const start = (i: number): Promise<NatsServer> =>
    startNatsServer({
      port: clientPorts[i] as number,
      storeDir: path.join(dir, names[i] as string),
      cluster: { name: 'forky-test', serverName: names[i] as string, port: routePorts[i] as number, routes },
      timeoutMs: 20_000,
    });
  const nodes: Array<NatsServer | undefined> = await Promise.all(names.map((_, i) => start(i)));
  return {
    nodes,
    names,
    urls: clientPorts.map((p) => `nats://127.0.0.1:${p}`),
    async kill(i) {
      const node = nodes[i];
      if (!node) return;
      const gone = new Promise((r) => node.process.once('exit', r));
      node.process.kill('SIGKILL');
      await withDeadline(gone, 5000, `${names[i]} killed`);
      nodes[i] = undefined;
    },
    async restart(i) {
      nodes[i] = await start(i);
    },
    async stop() {
      await Promise.all(nodes.map((node) => node?.stop()));
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
