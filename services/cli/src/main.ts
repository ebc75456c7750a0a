#!/usr/bin/env node
import { buildProgram } from './program.js';
import { describeError } from './output.js';

// A failure outside any command's own handling (which says it and exits) is a bug: said, exit 1.
buildProgram()
  .parseAsync()
  .catch((e: unknown) => {
    process.stderr.write(describeError(e));
    process.exit(1);
  });
