import type { CommandModule } from 'yargs';
import { PpoConfigSchema } from '../config/ppo.js';
import { type GlobalArgs, type OutputArgs, handler, loadStageConfig, outputOptions, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & OutputArgs;

export const ppoCommand: CommandModule<GlobalArgs, Args> = {
  command: 'ppo',
  builder: (y) =>
    outputOptions(y)
      .example('$0 ppo --config configs/ppo.yaml', 'PPO on the SFT policy with a rule reward')
      .example('$0 ppo --config configs/ppo-rm.yaml', 'PPO against the reward model from llmctl rm'),
  handler: handler<Args>('ppo', async (args) => {
    const cfg = loadStageConfig(PpoConfigSchema, args, { 'train.seed': args.seed }, { command: 'ppo' });
    await startBackend(args);
    const { ppo } = await import('../train/ppo.js'); // after the config checks: it loads tfjs
    const r = await ppo(cfg, { resume: args.resume, overwrite: args.overwrite });
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
