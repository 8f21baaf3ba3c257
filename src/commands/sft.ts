import type { CommandModule } from 'yargs';
import { SftConfigSchema } from '../config/stages.js';
import { type GlobalArgs, type OutputArgs, handler, loadStageConfig, outputOptions, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & OutputArgs;

export const sftCommand: CommandModule<GlobalArgs, Args> = {
  command: 'sft',
  builder: (y) => outputOptions(y).example('$0 sft --config configs/sft.yaml', 'fine-tune runs/pretrain on the Alpaca demo data'),
  handler: handler<Args>('sft', async (args) => {
    const cfg = loadStageConfig(SftConfigSchema, args, { 'train.seed': args.seed }, { command: 'sft' });
    await startBackend(args);
    const { sft } = await import('../train/sft.js'); // after the config checks: it loads tfjs
    const r = await sft(cfg, { resume: args.resume, overwrite: args.overwrite, force: args.force });
    printSummary(args, 'sft', {
      out_dir: cfg.out_dir,
      base: cfg.base,
      trainable_params: r.trainableParams,
      rows: r.data.rows,
      skipped_rows: r.data.skipped,
      truncated: r.data.stats.truncated,
      train_rows: r.data.trainRows,
      ...trainingSummary(r),
    });
  }),
};
