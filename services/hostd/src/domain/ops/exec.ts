import type { ExecRequest, ExecResult } from '@forky/contract';
import type { Host } from '../host.js';
import { assertAllowed } from '../state.js';

/**
 * Runs a command in a VM's guest. `sent` is called as the command goes to the guest: from then
 * on it may have run, so a keyed retry gets this outcome (result or failure) instead of a second run.
 */
export async function exec(host: Host, req: ExecRequest, sent: () => void = () => undefined): Promise<ExecResult> {
  // A child returned at `running` is reached only once its identity is set and its agent answers.
  await host.vms.get(req.id)?.settling;
  const vm = host.vm(req.id);
  assertAllowed(vm.id, vm.state, 'exec');
  const h = host.handle(vm);
  sent();
  return host.runtime.exec(h, req.cmd, { timeoutMs: req.timeoutMs, ...(req.input === undefined ? {} : { input: req.input }) });
}
