import path from 'node:path';
import { ValidationError } from './errors.js';

/**
 * Joins `segments` under `root` and proves the result stays inside it. Every path built from a
 * request goes through here. Each segment must be one plain path component: no `/`, no `.` or
 * `..`, no NUL, so an id can never climb out of the directory it names an entry of.
 */
export function safeJoin(root: string, ...segments: string[]): string {
  const base = path.resolve(root);
  for (const s of segments) {
    if (s.length === 0 || s === '.' || s === '..' || s.includes('/') || s.includes('\0')) {
      throw new ValidationError(`path segment ${JSON.stringify(s)} is not allowed`, { segment: s });
    }
  }
  const joined = path.resolve(base, ...segments);
  if (joined !== base && !joined.startsWith(base + path.sep)) {
    throw new ValidationError(`path ${JSON.stringify(segments.join('/'))} escapes its directory`, { segments });
  }
  return joined;
}

/** Unix socket paths are limited to 107 bytes by the kernel; fail early and clearly. */
export function checkSocketPath(p: string): string {
  if (Buffer.byteLength(p) > 107) {
    throw new ValidationError(`unix socket path too long (${Buffer.byteLength(p)} > 107 bytes): ${p}; use a shorter data directory`);
  }
  return p;
}
