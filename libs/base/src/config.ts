import fs from 'node:fs';
import type { z } from 'zod';
import { ValidationError } from './errors.js';

type Plain = Record<string, unknown>;

const isPlain = (v: unknown): v is Plain => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Later layers win; undefined never overrides. */
export function deepMerge(...layers: Plain[]): Plain {
  const out: Plain = {};
  for (const layer of layers) {
    for (const [k, v] of Object.entries(layer)) {
      if (v === undefined) continue;
      out[k] = isPlain(v) && isPlain(out[k]) ? deepMerge(out[k] as Plain, v) : v;
    }
  }
  return out;
}

export function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** Reads a JSON config file; a missing optional file is an empty layer. */
export function readConfigFile(file: string | undefined): Plain {
  if (!file) return {};
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ValidationError(`cannot read config file ${file}: ${(e as Error).message}`, { field: 'config' });
  }
  try {
    const v: unknown = JSON.parse(text);
    if (!isPlain(v)) throw new Error('not an object');
    return v;
  } catch (e) {
    throw new ValidationError(`config file ${file} is not a JSON object: ${(e as Error).message}`, { field: 'config' });
  }
}

/**
 * Parses configuration once, at start-up, from layers (defaults < file < env < flags), and
 * freezes it: nothing changes configuration while a service runs.
 */
export function parseConfig<S extends z.ZodType>(schema: S, ...layers: Plain[]): Readonly<z.infer<S>> {
  const r = schema.safeParse(deepMerge(...layers));
  if (!r.success) {
    const i = r.error.issues[0];
    const field = i?.path.map(String).join('.') ?? '';
    throw new ValidationError(`invalid configuration: ${field}: ${i?.message ?? 'invalid'}`, { field });
  }
  return deepFreeze(r.data as z.infer<S>);
}
