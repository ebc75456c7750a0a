import { execa } from 'execa';
import { ForkyError, type Logger } from '@forky/base';

/** nft seldom takes more than a few ms; a hung one must not hang hostd. */
const NFT_TIMEOUT_MS = 10_000;

function failure(what: string, e: unknown): ForkyError {
  const err = e as { stderr?: string; timedOut?: boolean; message?: string };
  const why = err.timedOut ? `timed out after ${NFT_TIMEOUT_MS} ms` : (err.stderr || err.message || String(e)).trim();
  return new ForkyError('INTERNAL', `nft ${what}: ${why}`, { cause: e });
}

/** The `nft` command: scripts on stdin (one atomic transaction each), listings as JSON. */
export class Nft {
  constructor(
    private readonly log: Logger,
    private readonly bin = 'nft',
  ) {}

  /** Runs a script as one transaction: all of it takes effect, or none. */
  async run(script: string): Promise<void> {
    try {
      await execa(this.bin, ['-f', '-'], { input: script, timeout: NFT_TIMEOUT_MS });
    } catch (e) {
      this.log.debug({ script }, 'nft script refused');
      throw failure('-f', e);
    }
  }

  /** `nft -j list ARGS…`: the objects listed (metainfo left out); undefined when the object does not exist. */
  async list(args: string[]): Promise<Array<Record<string, unknown>> | undefined> {
    let stdout: string;
    try {
      ({ stdout } = await execa(this.bin, ['-j', 'list', ...args], { timeout: NFT_TIMEOUT_MS }));
    } catch (e) {
      if (/No such file or directory/.test((e as { stderr?: string }).stderr ?? '')) return undefined;
      throw failure(`list ${args.join(' ')}`, e);
    }
    const parsed = JSON.parse(stdout) as { nftables?: Array<Record<string, unknown>> };
    return (parsed.nftables ?? []).filter((o) => !('metainfo' in o));
  }

  /** The version line (`nftables v1.0.6 …`), or the reason there is none. */
  async version(): Promise<string> {
    try {
      return (await execa(this.bin, ['--version'], { timeout: NFT_TIMEOUT_MS })).stdout.trim();
    } catch (e) {
      throw failure('--version', e);
    }
  }
}
