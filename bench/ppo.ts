/**
 * RL fine-tuning benchmark on the shipped small model: does the rule reward rise on held-out prompts, at
 * what KL to the SFT reference, and where a step's time goes (rollout = sampling with the KV cache,
 * score = log-probs of policy + reference + values + reward, update = the PPO epochs).
 *
 * Needs runs/sft (npm run demo, then node bin/llmctl.js sft --config configs/sft.yaml).
 *
 *   node --import tsx bench/ppo.ts [--config configs/ppo.yaml] [--steps 30] [--set key=value ...] [--json]
 *   node --import tsx bench/ppo.ts --config configs/grpo.yaml
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type BackendName, initBackend } from '../src/backend/index.js';
import { loadConfig } from '../src/config/load.js';
import { PpoConfigSchema } from '../src/config/ppo.js';
import { ppo } from '../src/train/ppo.js';
import { setupLogger } from '../src/util/log.js';

const { values: args } = parseArgs({
  options: {
    config: { type: 'string', default: 'configs/ppo.yaml' },
    steps: { type: 'string' },
    set: { type: 'string', multiple: true, default: [] },
    backend: { type: 'string', default: 'wasm' },
    json: { type: 'boolean', default: false },
  },
});

setupLogger('warn');
await initBackend(args.backend as BackendName);
const out = mkdtempSync(join(tmpdir(), 'llmctl-bench-ppo-'));
const sets = [...args.set!, `out_dir=${out}`, ...(args.steps ? [`train.max_steps=${args.steps}`] : [])];
let cfg;
try {
  cfg = loadConfig(PpoConfigSchema, args.config, sets);
} catch (err) {
  console.error(`bench/ppo: ${(err as Error).message}`);
  process.exit(2);
}
const curve: { step: number; score: number; kl: number }[] = [];
const t0 = performance.now();
try {
  const r = await ppo(cfg, {
    quiet: true,
    onStep: (step, m) => {
      curve.push({ step, score: m['objective/scores']!, kl: m['objective/kl']! });
      process.stderr.write(`step ${step}: score ${m['objective/scores']!.toFixed(3)} kl ${m['objective/kl']!.toFixed(3)} β ${m.kl_coef!.toFixed(4)}\n`);
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const sequences = cfg.rollout.batch_size * (cfg.algorithm === 'grpo' ? cfg.rollout.group_size : 1);
  const row = {
    config: args.config,
    algorithm: cfg.algorithm,
    reward: JSON.stringify(cfg.reward),
    steps: r.step,
    sequences_per_step: sequences,
    eval_prompts: r.evalStart?.prompts,
    eval_score_before: r.evalStart?.score,
    eval_score_after: r.evalEnd?.score,
    eval_kl_after: r.evalEnd?.kl,
    eval_eos_before: r.evalStart?.eos,
    eval_eos_after: r.evalEnd?.eos,
    train_score_first5: mean(curve.slice(0, 5).map((c) => c.score)),
    train_score_last5: mean(curve.slice(-5).map((c) => c.score)),
    final_kl_coef: r.metrics.kl_coef,
    rollout_tokens_per_s: Math.round(r.timing.rolloutTokensPerSecond),
    rollout_s_per_step: round(r.timing.rollout),
    score_s_per_step: round(r.timing.score),
    update_s_per_step: round(r.timing.update),
    total_s: round(seconds),
  };
  if (args.json) console.log(JSON.stringify(row));
  else for (const [k, v] of Object.entries(row)) console.log(`${k.padEnd(22)} ${typeof v === 'number' ? round(v) : v}`);
} finally {
  rmSync(out, { recursive: true, force: true });
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
