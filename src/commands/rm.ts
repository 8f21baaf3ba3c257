import type { CommandModule } from 'yargs';
import { loadRewardModel, scoreFile } from '../align/reward.js';
import { RmConfigSchema } from '../config/align.js';
import { pairMetrics, rm } from '../train/rm.js';
import { log } from '../util/log.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & { action?: string; resume: boolean; overwrite: boolean; checkpoint?: string; data?: string; 'skip-invalid': boolean };

export const rmCommand: CommandModule<GlobalArgs, Args> = {
  command: 'rm [action]',
  builder: (y) =>
    y
      .positional('action', { type: 'string', choices: ['train', 'score'], default: 'train', describe: 'train (with --config) or score' })
      .option('resume', { type: 'boolean', default: false, describe: 'train: continue the trainer checkpoint in out_dir (same config except train.max_steps / *_every / eval_batches)' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'train: replace the checkpoint already in out_dir (without it, an existing one is an error)' })
      .option('checkpoint', { type: 'string', describe: 'score: reward model directory (full checkpoint or LoRA reward adapter)' })
      .option('data', { type: 'string', describe: 'score: JSONL of preference rows, or Alpaca / chat rows (scores the last assistant turn)' })
      .option('skip-invalid', { type: 'boolean', default: false, describe: 'score: skip bad rows instead of stopping' })
      .example('$0 rm --config configs/rm.yaml', 'train a reward model on the preference pairs named in the config')
      .example('$0 rm score --checkpoint runs/rm --data data/alpaca_pref.jsonl', 'print {line, chosen, rejected} rewards, one JSON line per pair'),
  handler: handler<Args>('rm', async (args) => {
    if (args.action === 'score') {
      if (!args.checkpoint || !args.data) throw new InputError('rm score needs --checkpoint DIR and --data FILE');
      await startBackend(args);
      const model = loadRewardModel(args.checkpoint);
      try {
        const rows = scoreFile(model, args.data, { skipInvalid: args['skip-invalid'] });
        for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n');
        const pairs = rows.filter((r): r is { line: number; chosen: number; rejected: number } => 'chosen' in r);
        if (pairs.length) log().info({ pairs: pairs.length, ...pairMetrics(pairs.map((p) => p.chosen), pairs.map((p) => p.rejected)) }, 'rm score');
      } finally {
        model.dispose();
      }
      return;
    }
    const cfg = loadStageConfig(RmConfigSchema, args, { 'train.seed': args.seed });
    await startBackend(args);
    const r = await rm(cfg, { resume: args.resume, overwrite: args.overwrite });
    printSummary(args, 'rm', {
      out_dir: cfg.out_dir,
      base: cfg.base,
      mode: r.lora ? 'lora' : 'full',
      trainable_params: r.trainableParams,
      ...r.data,
      ...defined(trainingSummary(r)),
      ...pick(r.metrics, ['accuracy', 'margin', 'reward_mean', 'reward_std']),
    });
  }),
};

function pick(m: Record<string, number>, keys: string[]): Record<string, number> {
  return Object.fromEntries(keys.filter((k) => m[k] !== undefined).map((k) => [`val_${k}`, m[k]!]));
}

function defined(m: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined));
}
