import type { CommandModule } from 'yargs';
import { DpoConfigSchema } from '../config/align.js';
import { dpo } from '../train/dpo.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & { resume: boolean; overwrite: boolean };

export const dpoCommand: CommandModule<GlobalArgs, Args> = {
  command: 'dpo',
  builder: (y) =>
    y
      .option('resume', { type: 'boolean', default: false, describe: 'continue the trainer checkpoint in out_dir (same config except train.max_steps / *_every / eval_batches)' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace the checkpoint already in out_dir (without it, an existing one is an error)' })
      .example('$0 dpo --config configs/dpo.yaml', 'align the SFT model on preference pairs (reference: the base, log-probs precomputed)'),
  handler: handler<Args>('dpo', async (args) => {
    const cfg = loadStageConfig(DpoConfigSchema, args, { 'train.seed': args.seed });
    await startBackend(args);
    const r = await dpo(cfg, { resume: args.resume, overwrite: args.overwrite });
    const { val_ppl: _ppl, ...summary } = trainingSummary(r);
    const evalKeys = ['rewards/accuracies', 'rewards/margins', 'rewards/chosen', 'rewards/rejected', 'logps/chosen', 'logps/rejected'];
    printSummary(args, 'dpo', {
      out_dir: cfg.out_dir,
      base: cfg.base,
      reference: `${r.reference.path} (${r.reference.mode}${r.reference.precomputed ? `, log-probs precomputed: ${r.reference.cache}` : ''})`,
      mode: r.lora ? 'lora' : 'full',
      loss_type: cfg.dpo.loss_type,
      beta: cfg.dpo.beta,
      trainable_params: r.trainableParams,
      ...r.data,
      ...summary,
      ...Object.fromEntries(evalKeys.filter((k) => r.metrics[k] !== undefined).map((k) => [`val_${k}`, r.metrics[k]])),
    });
  }),
};
