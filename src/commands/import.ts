import type { CommandModule } from 'yargs';
import { importHf } from '../checkpoint/hf-import.js';
import { disposeParams, saveCheckpoint } from '../checkpoint/model.js';
import { ImportConfigSchema } from '../config/convert.js';
import { countParams } from '../model/gpt.js';
import { importLlama2c } from '../model/llama2c.js';
import { fromGguf } from '../quant/gguf-model.js';
import { readGguf } from '../quant/gguf.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & { format?: string; model?: string; tokenizer?: string; out?: string; overwrite: boolean };

export const importCommand: CommandModule<GlobalArgs, Args> = {
  command: 'import',
  builder: (y) =>
    y
      .option('format', { type: 'string', choices: ['llama2c', 'hf', 'gguf'], describe: 'source format: llama2c (default), hf (a Hugging Face Llama-family / GPT-2 directory) or gguf' })
      .option('model', { type: 'string', describe: 'llama2.c model .bin, a Hugging Face model directory (--format hf), or a .gguf file (llama / gpt2; f32, f16, q8_0, q4_0)' })
      .option('tokenizer', { type: 'string', describe: 'llama2.c tokenizer .bin (e.g. tok512.bin); --format llama2c only' })
      .option('out', { type: 'string', describe: 'checkpoint directory to write' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace a checkpoint already in --out' })
      .example('$0 import --model stories260K.bin --tokenizer tok512.bin --out runs/stories260K', 'convert a llama2.c model (flags or --config: format, model, tokenizer, out)')
      .example('$0 import --format hf --model ~/models/SmolLM-135M --out runs/smollm', 'import a Hugging Face checkpoint directory'),
  handler: handler<Args>('import', async (args) => {
    const cfg = loadStageConfig(ImportConfigSchema, args, { format: args.format, model: args.model, tokenizer: args.tokenizer, out: args.out }, {
      flags: { format: 'format', model: 'model', tokenizer: 'tokenizer', out: 'out' },
    });
    await startBackend(args);
    let m;
    try {
      if (cfg.format === 'hf') m = importHf(cfg.model);
      else if (cfg.format === 'gguf') m = fromGguf(readGguf(cfg.model), cfg.model);
      else {
        if (!cfg.tokenizer) throw new Error('--tokenizer: required with --format llama2c');
        m = importLlama2c(cfg.model, cfg.tokenizer);
      }
    } catch (err) {
      throw new InputError((err as Error).message);
    }
    try {
      await saveCheckpoint(cfg.out, {
        config: m.config, params: m.params, tokenizer: m.tokenizer, stage: 'import',
        stageConfig: cfg, parentDir: null, overwrite: args.overwrite,
      });
    } finally {
      disposeParams(m.params);
    }
    printSummary(args, 'import', { out: cfg.out, arch: m.config.arch, params: countParams(m.config), vocab_size: m.config.vocab_size, n_ctx: m.config.n_ctx });
  }),
};
