import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';

/** A tar member as a test writes it: any name (even a hostile one), a file, a directory, a link or a device. */
export interface TarEntry {
  name: string;
  type?: 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev';
  data?: Buffer | string;
  mode?: number;
  /** The symlink's or hard link's target. */
  target?: string;
  /** A character device's major and minor. */
  dev?: [number, number];
  /** Seconds since the epoch (default 1e9). */
  mtime?: number;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function header(e: TarEntry, size: number): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, at: number, len: number): void => void h.write(s, at, len, 'utf8');
  const octal = (n: number, at: number, len: number): void => put(n.toString(8).padStart(len - 1, '0') + '\0', at, len);
  const name = Buffer.from(e.name);
  // Long names go in ustar's prefix field (split at a slash), as tar does.
  let [prefix, base] = ['', e.name];
  if (name.length > 100) {
    const cut = e.name.lastIndexOf('/', 155);
    if (cut < 0 || Buffer.byteLength(e.name.slice(cut + 1)) > 100) throw new Error(`tar name too long: ${e.name}`);
    [prefix, base] = [e.name.slice(0, cut), e.name.slice(cut + 1)];
  }
  const type = e.type ?? 'file';
  put(base, 0, 100);
  octal(e.mode ?? (type === 'dir' ? 0o755 : 0o644), 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  octal(size, 124, 12);
  octal(e.mtime ?? 1_000_000_000, 136, 12);
  put('        ', 148, 8);
  put({ file: '0', hardlink: '1', symlink: '2', chardev: '3', dir: '5' }[type], 156, 1);
  put(e.target ?? '', 157, 100);
  put('ustar\0' + '00', 257, 8);
  put('root', 265, 32);
  put('root', 297, 32);
  octal(e.dev?.[0] ?? 0, 329, 8);
  octal(e.dev?.[1] ?? 0, 337, 8);
  put(prefix, 345, 155);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
  return h;
}

/** A ustar archive of `entries`, in their order, byte-identical for the same entries. */
export function tar(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const data = e.type === undefined || e.type === 'file' ? Buffer.from(e.data ?? '') : Buffer.alloc(0);
    parts.push(header(e, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

export interface ImageConfig {
  env?: string[];
}

const configOf = (c: ImageConfig, diffIds: string[]): Buffer =>
  Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: c.env ?? [] },
      rootfs: { type: 'layers', diff_ids: diffIds.map((d) => `sha256:${d}`) },
    }),
  );

/**
 * An OCI image layout as a tarball: `oci-layout`, `index.json` (an index naming a nested index for
 * linux/amd64 when `nested`, as `docker buildx` writes it), blobs by sha256. Layers are gzipped when `gzip`.
 */
export function ociLayout(layers: Buffer[], config: ImageConfig, opts: { gzip?: boolean[]; nested?: boolean } = {}): Buffer {
  const blobs = new Map<string, Buffer>();
  const add = (b: Buffer): { digest: string; size: number } => {
    const d = sha256(b);
    blobs.set(d, b);
    return { digest: `sha256:${d}`, size: b.length };
  };
  const cfg = add(configOf(config, layers.map(sha256)));
  const layerDescs = layers.map((l, i) =>
    opts.gzip?.[i]
      ? { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...add(gzipSync(l)) }
      : { mediaType: 'application/vnd.oci.image.layer.v1.tar', ...add(l) },
  );
  const manifest = add(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...cfg },
        layers: layerDescs,
      }),
    ),
  );
  const platform = { architecture: 'amd64', os: 'linux' };
  // Another platform first: the importer must pick linux/amd64, not the first entry.
  const arm = add(Buffer.from('{"schemaVersion":2,"layers":[]}'));
  let manifests = [
    { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...arm, platform: { architecture: 'arm64', os: 'linux' } },
    { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, platform },
  ];
  if (opts.nested) {
    const inner = add(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests })));
    manifests = [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...inner, platform }];
  }
  const index = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests };
  return tar([
    { name: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', data: JSON.stringify(index) },
    { name: 'blobs/', type: 'dir' },
    { name: 'blobs/sha256/', type: 'dir' },
    ...[...blobs].map(([d, b]) => ({ name: `blobs/sha256/${d}`, data: b })),
  ]);
}

/** A `docker save` tarball (the classic layout: manifest.json, the config, one directory per layer). */
export function dockerSave(layers: Buffer[], config: ImageConfig): Buffer {
  const ids = layers.map(sha256);
  const cfg = configOf(config, ids);
  const cfgName = `${sha256(cfg)}.json`;
  const manifest = [{ Config: cfgName, RepoTags: ['forky/test:latest'], Layers: ids.map((d) => `${d}/layer.tar`) }];
  return tar([
    { name: 'manifest.json', data: JSON.stringify(manifest) },
    { name: cfgName, data: cfg },
    ...ids.flatMap((d, i) => [
      { name: `${d}/`, type: 'dir' as const },
      { name: `${d}/layer.tar`, data: layers[i] as Buffer },
    ]),
  ]);
}
