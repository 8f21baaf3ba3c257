import type { CommandModule } from 'yargs';
import { PrepareConfigSchema } from '../config/stages.js';
import { prepare } from '../data/prepare.js';
import { printCleanReport } from './clean.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary } from './common.js';

type Args = GlobalArgs & { samples?: number };

export const prepareCommand: CommandModule<GlobalArgs, Args> = {
  command: 'prepare',
  builder: (y) => y
    .option('samples', { type: 'number', describe: 'with a clean: section, write N removed examples per step to <out_dir>/clean-samples.jsonl' })
    .example('$0 prepare --config configs/prepare.yaml', 'tokenize tiny Shakespeare into data/tokens (training a BPE tokenizer)')
    .example('$0 prepare --config configs/prepare-clean.yaml --samples 3', 'clean (dedup, quality, PII, toxicity), then tokenize'),
  handler: handler<Args>('prepare', async (args) => {
    const cfg = loadStageConfig(PrepareConfigSchema, args, args.samples !== undefined ? { 'clean.samples': args.samples } : {}, { flags: { 'clean.samples': 'samples' }, command: 'prepare' });
    const r = await prepare(cfg);
    if (r.clean) printCleanReport(args, r.clean);
    printSummary(args, 'prepare', {
      out_dir: r.outDir,
      vocab_size: r.vocabSize,
      train_tokens: r.trainTokens,
      val_tokens: r.valTokens,
      bytes_per_token: r.bytes / Math.max(1, r.trainTokens + r.valTokens),
      seconds: r.seconds,
      ...(args.json && r.clean ? { clean: r.clean } : {}),
    });
  }),
};
