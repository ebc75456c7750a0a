import { pino, destination, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level?: LevelWithSilent;
  name?: string;
  /** Where log lines go; default stderr so stdout stays free for program output. */
  destination?: number | string;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  return pino(
    { level: opts.level ?? 'info', name: opts.name, base: { pid: process.pid } },
    destination({ dest: opts.destination ?? 2, sync: false }),
  );
}

/** A logger that drops everything, for tests and tools that have nothing to say. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
