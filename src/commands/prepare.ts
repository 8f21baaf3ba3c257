import type { CommandModule } from 'yargs';
import { PrepareConfigSchema } from '../config/stages.js';
import { prepare } from '../data/prepare.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary } from './common.js';

export const prepareCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'prepare',
  builder: (y) => y.example('$0 prepare --config configs/prepare.yaml', 'tokenize tiny Shakespeare into data/tokens (training a BPE tokenizer)'),
  handler: handler('prepare', async (args) => {
    const cfg = loadStageConfig(PrepareConfigSchema, args, {}, { command: 'prepare' });
    const r = await prepare(cfg);
    printSummary(args, 'prepare', {
      out_dir: r.outDir,
      vocab_size: r.vocabSize,
      train_tokens: r.trainTokens,
      val_tokens: r.valTokens,
      bytes_per_token: r.bytes / Math.max(1, r.trainTokens + r.valTokens),
      seconds: r.seconds,
    });
  }),
};
