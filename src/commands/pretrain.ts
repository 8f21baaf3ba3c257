import type { CommandModule } from 'yargs';
import { PretrainConfigSchema } from '../config/stages.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & { resume: boolean };

export const pretrainCommand: CommandModule<GlobalArgs, Args> = {
  command: 'pretrain',
  builder: (y) => y.option('resume', { type: 'boolean', default: false, describe: 'continue from the trainer state in out_dir' }),
  handler: handler<Args>('pretrain', async (args) => {
    const cfg = loadStageConfig(PretrainConfigSchema, args, { 'train.seed': args.seed });
    await startBackend(args);
    const { pretrain } = await import('../train/pretrain.js'); // after the config checks: it loads tfjs
    const r = await pretrain(cfg, { resume: args.resume });
    printSummary(args, 'pretrain', {
      out_dir: cfg.out_dir,
      params: r.params,
      ...trainingSummary(r),
    });
  }),
};
