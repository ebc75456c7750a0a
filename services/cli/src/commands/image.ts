import type { Command } from 'commander';
import { positiveInt, type CliContext } from './context.js';

const actions = () => import('../actions/image.js');

/** `forky image ls | build | import`: guest images in the data directory, built from recipes in images/. */
export function registerImage(program: Command, cli: CliContext): void {
  const image = program.command('image').description('guest images');
  image.command('ls').description('images built in the data directory: name, id, size and when built').action(cli.lazy(actions, 'ls'));
  image
    .command('build [name]')
    .description('build an image from images/NAME/image.json (or its own build.sh); skipped when up to date')
    .action(cli.lazy(actions, 'build'));
  image
    .command('import <name> <file>')
    .description('import an OCI layout, `docker save` or root file system tarball as image NAME (adds our kernel, agent and init)')
    .option('--disk <GiB>', 'root disk size (default: the unpacked root plus headroom, whole GiB)', positiveInt('disk'))
    .action(cli.lazy(() => import('../actions/image-import.js'), 'importImage'));
}
