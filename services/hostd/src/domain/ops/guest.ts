import type { GuestSession } from '@forky/agent';
import type { Host } from '../host.js';
import { assertAllowed } from '../state.js';

/** A running VM's guest agent session, for the sandbox endpoints: checked as an exec is. */
export async function guestSession(host: Host, id: string): Promise<GuestSession> {
  // A child returned at `running` is reached only once its identity is set and its agent answers.
  await host.vms.get(id)?.settling;
  const vm = host.vm(id);
  assertAllowed(vm.id, vm.state, 'exec');
  return host.runtime.guest(host.handle(vm));
}
