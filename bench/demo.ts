/**
 * The quick start: a local nats-server and hostd, one VM booted, then forked into children that
 * each resume it. Prints what it did; `--keep` leaves it running until Ctrl-C.
 */
import { startLocal } from './local.js';

const keep = process.argv.includes('--keep');
const count = Number(process.argv[process.argv.indexOf('--count') + 1] || 0) || 4;
const log = (s: string): boolean => process.stdout.write(s + '\n');

const local = await startLocal();
const { client } = local;
try {
  const info = await client.call('host.info', {});
  log(`host ${info.id}: accel=${info.accel} (${info.accelReason}), QEMU ${info.qemuVersion}, ${info.cpus} CPUs`);
  let t = performance.now();
  const parent = await client.call('vm.boot', { memMiB: 256 });
  log(`booted ${parent.id} in ${Math.round(performance.now() - t)} ms`);
  const sh = async (id: string, script: string): Promise<string> => (await client.call('vm.exec', { id, cmd: ['/bin/sh', '-c', script] })).stdout.trim();
  // boot_id is made on first read; read it now so it is part of the state the children inherit.
  await sh(parent.id, `cat /proc/sys/kernel/random/boot_id >/dev/null; echo "written by ${parent.id} before the fork" > /run/note; (i=0; while true; do i=$((i+1)); echo $i > /run/counter.new; mv /run/counter.new /run/counter; usleep 50000; done) >/dev/null 2>&1 &`);
  t = performance.now();
  const fork = await client.call('fork', { source: parent.id, count, resumeParent: true });
  log(`forked ${count} children in ${Math.round(performance.now() - t)} ms (snapshot ${fork.snapshot.id}, ${fork.timings.snapshotMs} ms)\n`);
  log(`${'vm'.padEnd(16)} ${'role'.padEnd(7)} ${'state'.padEnd(8)} ${'boot id'.padEnd(37)} counter  /run/note`);
  for (const vm of [parent, ...fork.children]) {
    const [bootId, counter, note] = (await sh(vm.id, 'cat /proc/sys/kernel/random/boot_id /run/counter /run/note')).split('\n');
    const state = (await client.call('vm.show', { id: vm.id })).state;
    log(`${vm.id.padEnd(16)} ${(vm.id === parent.id ? 'parent' : 'child').padEnd(7)} ${state.padEnd(8)} ${String(bootId).padEnd(37)} ${String(counter).padStart(7)}  ${note}`);
  }
  log('\nEvery child has the parent\'s boot id and note, and its counter goes on from the parent\'s: it resumed, it did not boot.');
  if (keep) {
    log(`\nhost ${local.host.hostId} serves on ${local.nats.url}; Ctrl-C stops and removes everything.`);
    await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
  }
} finally {
  await local.stop();
}
