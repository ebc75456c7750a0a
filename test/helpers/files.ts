import fs from 'node:fs/promises';
import path from 'node:path';

/** Every file below `dir`, with size (logs left out): "nothing changed" is checked against this. */
export async function fileTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (!e.name.endsWith('.log')) {
        // Gone between the listing and the stat (a layer released as the walk ran): not there.
        const size = e.isSocket()
          ? 'sock'
          : await fs.stat(p).then(
              (st) => st.size,
              (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)),
            );
        if (size !== undefined) out.push(`${path.relative(dir, p)}:${size}`);
      }
    }
  };
  await walk(dir);
  return out.sort();
}
