import type { CommandModule } from 'yargs';
import { PretrainConfigSchema } from '../config/stages.js';
import { type GlobalArgs, type OutputArgs, handler, loadStageConfig, outputOptions, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & OutputArgs;

export const pretrainCommand: CommandModule<GlobalArgs, Args> = {
  command: 'pretrain',
  builder: (y) =>
    outputOptions(y)
      .example('$0 pretrain --config configs/pretrain.yaml', 'train the shipped model on the prepared shards')
      .example('$0 pretrain --config configs/pretrain.yaml --resume --set train.max_steps=600', 'continue that run for more steps'),
  handler: handler<Args>('pretrain', async (args) => {
    const cfg = loadStageConfig(PretrainConfigSchema, args, { 'train.seed': args.seed }, { command: 'pretrain' });
    await startBackend(args);
    const { pretrain } = await import('../train/pretrain.js'); // after the config checks: it loads tfjs
    const r = await pretrain(cfg, { resume: args.resume, overwrite: args.overwrite, force: args.force });
    printSummary(args, 'pretrain', {
      out_dir: cfg.out_dir,
      params: r.params,
      ...trainingSummary(r),
    });
  }),
};
