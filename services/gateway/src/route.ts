import { VmId } from '@forky/contract';

export interface Target {
  vm: string;
  port: number;
}

/**
 * The guest port a Host header names: `<vmId>-<port>.<domain>[:port]`, case-insensitive (browsers
 * lowercase it anyway). Undefined for any other host: the gateway serves previews and nothing else.
 */
export function routeOf(host: string | undefined, domain: string): Target | undefined {
  if (host === undefined) return undefined;
  const name = host
    .toLowerCase()
    .replace(/:\d{1,5}$/, '')
    .replace(/\.$/, '');
  if (!name.endsWith(`.${domain}`)) return undefined;
  const label = name.slice(0, -domain.length - 1);
  const m = /^(vm-[a-z0-9]{12})-(\d{1,5})$/.exec(label);
  if (!m || !VmId.safeParse(m[1]).success) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535 || String(port) !== m[2]) return undefined;
  return { vm: m[1] as string, port };
}

/** The URL of a preview. */
export function previewUrl(t: Target, domain: string, port: number): string {
  return `http://${t.vm}-${t.port}.${domain}${port === 80 ? '' : `:${port}`}/`;
}
