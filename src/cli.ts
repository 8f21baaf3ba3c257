/** llmctl: one command per stage of a language model's life. Each reads a config and a checkpoint dir, writes a new one. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { globalOptions } from './commands/common.js';
import { generateCommand } from './commands/generate.js';
import { importCommand } from './commands/import.js';
import { pipelineCommand } from './commands/pipeline.js';
import { loraCommand } from './commands/lora.js';
import { prepareCommand } from './commands/prepare.js';
import { pretrainCommand } from './commands/pretrain.js';
import { sftCommand } from './commands/sft.js';

export async function main(argv: string[] = hideBin(process.argv)): Promise<void> {
  const y = yargs(argv);
  await globalOptions(y)
    .scriptName('llmctl')
    .wrap(Math.min(120, y.terminalWidth()))
    .usage('$0 <command> --config file.yaml [--set key=value] [--backend auto|tensorflow|wasm|cpu]')
    .command(prepareCommand)
    .command(pretrainCommand)
    .command(generateCommand)
    .command(importCommand)
    .command(pipelineCommand)
    .command(sftCommand)
    .command(loraCommand)
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
