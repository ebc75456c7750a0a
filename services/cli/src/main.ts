#!/usr/bin/env node
import { buildProgram } from './program.js';

// `forky vm ls | head -1`: the reader went away; the rest of the output is not wanted, so stop quietly.
for (const out of [process.stdout, process.stderr])
  out.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });

// A failure outside any command's own handling (which says it and exits) is a bug: said, exit 1.
buildProgram()
  .parseAsync()
  .catch(async (e: unknown) => {
    const { describeError } = await import('./describe-error.js');
    process.stderr.write(describeError(e));
    process.exit(1);
  });
