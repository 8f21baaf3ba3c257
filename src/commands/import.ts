import type { CommandModule } from 'yargs';
import { importHf } from '../checkpoint/hf-import.js';
import { disposeParams, saveCheckpoint } from '../checkpoint/model.js';
import { countParams } from '../model/gpt.js';
import { importLlama2c } from '../model/llama2c.js';
import { fromGguf } from '../quant/gguf-model.js';
import { readGguf } from '../quant/gguf.js';
import { type GlobalArgs, InputError, handler, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & { format: string; model: string; tokenizer?: string; out: string };

export const importCommand: CommandModule<GlobalArgs, Args> = {
  command: 'import',
  builder: (y) =>
    y
      .option('format', { type: 'string', choices: ['llama2c', 'hf', 'gguf'], default: 'llama2c' })
      .option('model', { type: 'string', demandOption: true, describe: 'llama2.c model .bin, a Hugging Face model directory (--format hf), or a .gguf file (llama / gpt2; f32, f16, q8_0, q4_0)' })
      .option('tokenizer', { type: 'string', describe: 'llama2.c tokenizer .bin (e.g. tok512.bin); --format llama2c only' })
      .option('out', { type: 'string', demandOption: true, describe: 'checkpoint directory to write' }),
  handler: handler<Args>('import', async (args) => {
    await startBackend(args);
    let m;
    try {
      if (args.format === 'hf') m = importHf(args.model);
      else if (args.format === 'gguf') m = fromGguf(readGguf(args.model), args.model);
      else {
        if (!args.tokenizer) throw new Error('--tokenizer: required with --format llama2c');
        m = importLlama2c(args.model, args.tokenizer);
      }
    } catch (err) {
      throw new InputError((err as Error).message);
    }
    await saveCheckpoint(args.out, {
      config: m.config, params: m.params, tokenizer: m.tokenizer, stage: 'import',
      stageConfig: { format: args.format, model: args.model, ...(args.tokenizer ? { tokenizer: args.tokenizer } : {}) }, parentDir: null,
    });
    printSummary(args, 'import', { out: args.out, arch: m.config.arch, params: countParams(m.config), vocab_size: m.config.vocab_size, n_ctx: m.config.n_ctx });
    disposeParams(m.params);
  }),
};
