import type { Command } from 'commander';
import { ValidationError } from '@forky/base';
import { printJson } from '../output.js';
import type { CliContext } from '../commands/context.js';

/** `forky req SUBJECT [JSON]`: a raw request, sent once whatever it is (the CLI cannot tell a read from a write here). */
export async function req(cli: CliContext, subject: string, body: string | undefined, _o: unknown, cmd: Command): Promise<void> {
  let value: unknown;
  try {
    value = JSON.parse(body ?? '{}');
  } catch (e) {
    throw new ValidationError(`the request body is not JSON: ${(e as Error).message}`, { field: 'json' });
  }
  printJson(await cli.withSession(cmd, (s) => s.raw(subject, value)));
}
