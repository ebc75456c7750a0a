import { HostId } from './ids.js';

/**
 * Subject layout. The version is part of the subject, so a v2 contract can run beside v1.
 *   forky.v1.host.<hostId>.<endpoint>   one hostd's endpoints
 */
export const SUBJECT_ROOT = 'forky.v1';

export const HOSTD_ENDPOINTS = [
  'host.info',
  'vm.boot',
  'vm.list',
  'vm.show',
  'vm.pause',
  'vm.resume',
  'vm.destroy',
  'vm.exec',
  'snapshot.create',
  'snapshot.list',
  'snapshot.show',
  'snapshot.delete',
  'fork',
] as const;
export type HostdEndpoint = (typeof HOSTD_ENDPOINTS)[number];

export const subjects = {
  hostPrefix: (hostId: string): string => `${SUBJECT_ROOT}.host.${HostId.parse(hostId)}`,
  host: (hostId: string, endpoint: HostdEndpoint): string => `${subjects.hostPrefix(hostId)}.${endpoint}`,
} as const;

export const SERVICE_NAMES = { hostd: 'forky-hostd' } as const;
