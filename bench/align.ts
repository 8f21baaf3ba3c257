/**
 * Alignment benchmark on the shipped small model (runs/sft: `npm run demo` then
 * `node bin/llmctl.js sft --config configs/sft.yaml`).
 *
 *   quality: configs/rm.yaml and configs/dpo.yaml as shipped (data/alpaca_pref.jsonl: chosen = the real
 *            Alpaca answer, rejected = its words shuffled or the answer cut mid-sentence; the last 15 % of
 *            pairs held out) → held-out RM pairwise accuracy before/after, DPO implicit-reward accuracy and
 *            the chosen − rejected log-prob margin before/after. Then HH-RLHF harmless-base (real
 *            human preferences): the Alpaca-trained RM scored on all of it, and an RM trained on its first
 *            80 % scored on the last 20 %.
 *   speed:   step time of SFT vs DPO (precomputed reference log-probs, and a live reference forward) on
 *            the same model and the same token rows, through the one trainer loop; rounds interleaved.
 *
 *   node --import tsx bench/align.ts [--part quality|speed|all] [--steps 12] [--rounds 3] [--hh-steps 200]
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { initScoreHead, loadRewardModel, scoreFile } from '../src/align/reward.js';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint } from '../src/checkpoint/model.js';
import { DpoConfigSchema, RmConfigSchema } from '../src/config/align.js';
import { loadConfig } from '../src/config/load.js';
import type { PairExample } from '../src/data/preference.js';
import { type SftBatch, type SftExample, sftBatchSource } from '../src/data/sft.js';
import { dpo, referenceLogps } from '../src/train/dpo.js';
import { loadPreferenceData, pairMetrics, rm, rmEvaluate } from '../src/train/rm.js';
import { sftLoss } from '../src/train/sft.js';
import { train } from '../src/train/trainer.js';
import { setupLogger } from '../src/util/log.js';

const { values: args } = parseArgs({
  options: { part: { type: 'string', default: 'all' }, steps: { type: 'string', default: '12' }, rounds: { type: 'string', default: '3' }, 'hh-steps': { type: 'string', default: '200' } },
});
const SFT_DIR = 'runs/sft';
const HH = '../shared/data/preference/hh_rlhf_harmless_base_test.jsonl';
await initBackend('wasm');
setupLogger('warn');
if (!existsSync(SFT_DIR)) {
  console.error(`${SFT_DIR} is missing: run \`npm run demo\` and \`node bin/llmctl.js sft --config configs/sft.yaml\` first`);
  process.exit(2);
}
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-bench-align-'));
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

async function quality(): Promise<void> {
  // ---- reward model on the synthetic Alpaca pairs
  const rmCfg = loadConfig(RmConfigSchema, 'configs/rm.yaml', [`out_dir=${join(TMP, 'rm')}`]);
  const ck = loadCheckpoint(SFT_DIR);
  const data = loadPreferenceData(rmCfg.data, ck.tokenizer, ck.config.n_ctx, SFT_DIR);
  const head = initScoreHead(ck.config, rmCfg.train.seed);
  const before = rmEvaluate({ ...ck.params, 'score.weight': head }, ck.config, data.val, 16, Infinity, ck.tokenizer.padId, {});
  head.dispose();
  const val = data.val;
  const refVal = referenceLogps(ck.params, ck.config, val, 16, ck.tokenizer.padId, {}, false);
  disposeParams(ck.params);
  let t0 = performance.now();
  const r = await rm(rmCfg, { quiet: true });
  const rmSeconds = (performance.now() - t0) / 1000;
  const after = r.metrics;
  console.log(`\nReward model (configs/rm.yaml, ${r.step} steps, ${rmSeconds.toFixed(0)} s): held-out pairwise accuracy on ${val.length} Alpaca pairs`);
  console.log(`  before (fresh head): ${pct(before.accuracy!)}   after: ${pct(after.accuracy!)}   (val loss ${before.val_loss!.toFixed(3)} → ${after.val_loss!.toFixed(3)}, mean margin ${after.margin!.toFixed(2)})`);

  // ---- DPO on the same pairs
  const dpoCfg = loadConfig(DpoConfigSchema, 'configs/dpo.yaml', [`out_dir=${join(TMP, 'dpo')}`]);
  t0 = performance.now();
  const d = await dpo(dpoCfg, { quiet: true });
  const dpoSeconds = (performance.now() - t0) / 1000;
  const marginBefore = mean(Array.from(refVal.chosen, (c, i) => c - refVal.rejected[i]!));
  const m = d.metrics;
  console.log(`\nDPO (configs/dpo.yaml, ${d.step} steps, ${dpoSeconds.toFixed(0)} s): held-out ${val.length} Alpaca pairs`);
  console.log(`  implicit-reward accuracy: before 0.0 % (policy = reference, every reward 0)   after: ${pct(m['rewards/accuracies']!)}`);
  console.log(`  log-prob margin log π(chosen) − log π(rejected): before ${marginBefore.toFixed(2)}   after ${(m['logps/chosen']! - m['logps/rejected']!).toFixed(2)}`);
  console.log(`  reward margin ${m['rewards/margins']!.toFixed(3)}, val loss ${Math.LN2.toFixed(4)} → ${m.val_loss!.toFixed(4)}`);

  // ---- HH-RLHF harmless-base
  if (!existsSync(HH)) {
    console.log(`\nHH-RLHF: ${HH} not found; skipped`);
    return;
  }
  const model = loadRewardModel(join(TMP, 'rm'));
  const rows = scoreFile(model, HH, { skipInvalid: true });
  model.dispose();
  const pairs = rows.filter((x): x is { line: number; chosen: number; rejected: number } => 'chosen' in x);
  const alpacaOnHh = pairMetrics(pairs.map((p) => p.chosen), pairs.map((p) => p.rejected));
  console.log(`\nHH-RLHF harmless-base test (${pairs.length} valid pairs of 2,000 rows; the rest have an empty response or differ before the last turn)`);
  console.log(`  RM trained on the Alpaca pairs: accuracy ${pct(alpacaOnHh.accuracy)}`);
  const hhCfg = RmConfigSchema.parse({ ...rmCfg, data: { path: HH, skip_invalid: true, val_fraction: 0.2 }, train: { ...rmCfg.train, max_steps: Number(args['hh-steps']), eval_every: 0 }, out_dir: join(TMP, 'rm-hh') });
  t0 = performance.now();
  const h = await rm(hhCfg, { quiet: true });
  console.log(`  RM trained on the first 80 % (${h.data.train_pairs} pairs, ${h.step} steps, ${((performance.now() - t0) / 1000).toFixed(0)} s), held-out ${h.data.val_pairs}: accuracy ${pct(h.metrics.accuracy!)} (chance 50 %; n_ctx 64 truncates ${h.data.truncated} of ${h.data.pairs} pairs)`);
}

function mean(a: number[]): number {
  return a.reduce((x, y) => x + y, 0) / a.length;
}

async function speed(): Promise<void> {
  const steps = Number(args.steps), rounds = Number(args.rounds);
  const base = loadCheckpoint(SFT_DIR);
  const dpoBase = loadConfig(DpoConfigSchema, 'configs/dpo.yaml', []);
  const data = loadPreferenceData({ ...dpoBase.data, val_fraction: 0 }, base.tokenizer, base.config.n_ctx, SFT_DIR);
  const B = dpoBase.train.batch_size;
  // SFT on the very rows DPO sees: each pair's chosen and rejected sequence, trained on the response.
  const sftExamples: SftExample[] = data.train.flatMap((p: PairExample) => [p.chosen, p.rejected].map((s) => ({ ids: s.ids, trainMask: s.ids.map((_, i) => (i >= s.start ? 1 : 0)), line: p.line })));
  const loop = { ...dpoBase.train, max_steps: steps, eval_every: 0, save_every: 0, log_every: 1000 };
  const times: Record<string, number[]> = { sft: [], 'dpo (precomputed ref)': [], 'dpo (live ref)': [] };
  const tokens: Record<string, number> = {};
  const record = (name: string) => (i: { step: number; seconds: number; tokens: number }) => {
    if (i.step > 2) times[name]!.push(i.seconds); // skip the first steps (kernel warm-up)
    tokens[name] = i.tokens;
  };
  for (let round = 0; round < rounds; round++) {
    // SFT: 2B rows per step, like DPO's B pairs.
    const params = Object.fromEntries(Object.entries(base.params).map(([k, t]) => [k, tf.variable(tf.clone(t))]));
    await train<SftBatch>({
      stage: 'bench-sft', outDir: join(TMP, `sft-${round}`), params, quiet: true,
      loss: (b) => sftLoss(params, base.config, b, { training: true }),
      batches: sftBatchSource(sftExamples, 2 * B, base.tokenizer.padId, 1),
      save: async () => {},
      optim: dpoBase.optim, loop, onStep: record('sft'),
    });
    disposeParams(params);
    for (const precompute of [true, false]) {
      const name = precompute ? 'dpo (precomputed ref)' : 'dpo (live ref)';
      const cfg = DpoConfigSchema.parse({ ...dpoBase, data: { ...dpoBase.data, val_fraction: 0 }, dpo: { ...dpoBase.dpo, precompute_ref_logps: precompute }, train: loop, out_dir: join(TMP, `dpo-${round}-${precompute}`) });
      await dpo(cfg, { quiet: true, onStep: record(name) });
    }
  }
  disposeParams(base.params);
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  const sftMs = 1000 * med(times.sft!);
  console.log(`\nStep time, ${SFT_DIR} (${base.config.n_layer} layers, d ${base.config.n_embd}, ctx ${base.config.n_ctx}), ${B} pairs = ${2 * B} rows per step; median of ${rounds} interleaved rounds × ${steps - 2} steps`);
  console.log('| run | tokens/step | median step | min step | × SFT |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const [name, t] of Object.entries(times)) {
    const ms = 1000 * med(t);
    console.log(`| ${name} | ${tokens[name]} | ${ms.toFixed(0)} ms | ${(1000 * Math.min(...t)).toFixed(0)} ms | ${(ms / sftMs).toFixed(2)}x |`);
  }
}

try {
  if (args.part === 'quality' || args.part === 'all') await quality();
  if (args.part === 'speed' || args.part === 'all') await speed();
} finally {
  rmSync(TMP, { recursive: true, force: true });
}
