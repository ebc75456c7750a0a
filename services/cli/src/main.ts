#!/usr/bin/env node
import { buildProgram } from './program.js';

// A failure outside any command's own handling (which says it and exits) is a bug: said, exit 1.
buildProgram()
  .parseAsync()
  .catch(async (e: unknown) => {
    const { describeError } = await import('./describe-error.js');
    process.stderr.write(describeError(e));
    process.exit(1);
  });
