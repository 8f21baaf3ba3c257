import type { CommandModule } from 'yargs';
import { SftConfigSchema } from '../config/stages.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & { resume: boolean };

export const sftCommand: CommandModule<GlobalArgs, Args> = {
  command: 'sft',
  builder: (y) => y.option('resume', { type: 'boolean', default: false, describe: 'continue from the trainer state in out_dir' }),
  handler: handler<Args>('sft', async (args) => {
    const cfg = loadStageConfig(SftConfigSchema, args, { 'train.seed': args.seed });
    await startBackend(args);
    const { sft } = await import('../train/sft.js'); // after the config checks: it loads tfjs
    const r = await sft(cfg, { resume: args.resume });
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
