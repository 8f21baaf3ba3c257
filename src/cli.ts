/** llmctl: one command per stage of a language model's life. Each reads a config and a checkpoint dir, writes a new one. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { globalOptions } from './commands/global.js';
import { COMMANDS } from './commands/index.js';

export async function main(argv: string[] = hideBin(process.argv)): Promise<void> {
  const y = globalOptions(yargs(argv));
  y.scriptName('llmctl')
    .wrap(Math.min(120, y.terminalWidth()))
    .usage('$0 <command> --config file.yaml [--set key=value] [--backend auto|tensorflow|wasm|cpu]');
  // Only the command being run is loaded; the others are listed by name and description.
  const wanted = argv.find((a) => !a.startsWith('-'));
  for (const entry of COMMANDS) {
    if (entry.name === wanted) y.command({ ...(await entry.load()), describe: entry.describe });
    else y.command(entry.name, entry.describe);
  }
  await y
    .demandCommand(1, 'name a command, e.g. llmctl pretrain --config configs/pretrain.yaml')
    .strict()
    .fail((msg, err, y) => {
      if (err) throw err;
      process.stderr.write(`${y.help() && ''}llmctl: ${msg}\n(see llmctl --help)\n`);
      process.exit(2);
    })
    .help()
    .version()
    .parseAsync();
}
