import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ForkyError } from '@forky/base';

const SECRET_BYTES = 32;
/** Versioned and namespaced: the same secret can never mint a token that means something else. */
const TOKEN_CONTEXT = 'forky-preview/v1/';

/** The preview token of a VM: valid for every port of that VM, for as long as the secret stays. */
export function previewToken(secret: Buffer, vmId: string): string {
  return createHmac('sha256', secret)
    .update(TOKEN_CONTEXT + vmId)
    .digest('base64url');
}

/** Whether `given` is the VM's token, in time independent of where they differ. */
export function tokenMatches(secret: Buffer, vmId: string, given: string | undefined): boolean {
  if (given === undefined) return false;
  const want = Buffer.from(previewToken(secret, vmId));
  const got = Buffer.from(given);
  // Every token has the same (public) length: only a wrong-length guess is told apart early.
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * Reads the secret, or makes it (32 random bytes, 0600, in a 0700 directory) if the file is missing.
 * A file of another size, or readable by others, is refused: the secret mints every token.
 */
export async function loadSecret(file: string): Promise<Buffer> {
  const made = randomBytes(SECRET_BYTES);
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    // `wx`: two gateways starting at once keep one secret, not a file each wrote half of.
    await fs.writeFile(file, made, { mode: 0o600, flag: 'wx' });
    return made;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw secretError(file, e);
  }
  let st, bytes: Buffer;
  try {
    st = await fs.stat(file);
    bytes = await fs.readFile(file);
  } catch (e) {
    throw secretError(file, e);
  }
  if ((st.mode & 0o077) !== 0) throw new ForkyError('BAD_REQUEST', `the preview secret ${file} is readable by others: chmod 600 it`);
  if (bytes.length !== SECRET_BYTES) throw new ForkyError('BAD_REQUEST', `the preview secret ${file} is not ${SECRET_BYTES} bytes`);
  return bytes;
}

const secretError = (file: string, e: unknown): ForkyError =>
  new ForkyError('BAD_REQUEST', `cannot read or make the preview secret ${file}: ${(e as Error).message}`, {
    cause: e,
    details: { field: 'secretFile' },
  });
