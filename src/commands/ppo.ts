import type { CommandModule } from 'yargs';
import { PpoConfigSchema } from '../config/ppo.js';
import { ppo } from '../train/ppo.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & { resume: boolean };

export const ppoCommand: CommandModule<GlobalArgs, Args> = {
  command: 'ppo',
  builder: (y) => y.option('resume', { type: 'boolean', default: false, describe: 'continue from the trainer state in out_dir' }),
  handler: handler<Args>('ppo', async (args) => {
    const cfg = loadStageConfig(PpoConfigSchema, args, { 'train.seed': args.seed });
    await startBackend(args);
    const r = await ppo(cfg, { resume: args.resume });
    if (r.interrupted) process.exitCode = 130;
    const m = r.metrics;
    printSummary(args, cfg.algorithm, {
      out_dir: cfg.out_dir,
      policy: cfg.policy,
      reward: cfg.reward.type,
      steps: r.step,
      trainable_params: r.trainableParams,
      prompts_train: r.prompts.train,
      prompts_eval: r.prompts.eval,
      ...(r.evalStart ? { eval_score_before: r.evalStart.score, eval_kl_before: r.evalStart.kl } : {}),
      ...(r.evalEnd ? { eval_score_after: r.evalEnd.score, eval_kl_after: r.evalEnd.kl, eval_eos_after: r.evalEnd.eos, eval_length_after: r.evalEnd.length } : {}),
      last_scores: m['objective/scores'],
      last_kl: m['objective/kl'],
      kl_coef: m.kl_coef,
      rollout_tokens_per_s: Math.round(r.timing.rolloutTokensPerSecond),
      'time_per_step_s (rollout/score/update)': `${r.timing.rollout.toFixed(2)} / ${r.timing.score.toFixed(2)} / ${r.timing.update.toFixed(2)}`,
      interrupted: r.interrupted,
    });
  }),
};
