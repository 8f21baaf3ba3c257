/**
 * `llmctl rm`: a reward model (transformer + `score.weight` head at the last response token) trained
 * with the Bradley–Terry loss on preference pairs, through the shared trainer loop; full or LoRA.
 * Also the preference-data loading that `dpo` shares.
 */
import * as tf from '@tensorflow/tfjs-core';
import { bradleyTerryLoss } from '../align/losses.js';
import { rewardForward } from '../align/reward.js';
import { loadTrainerState } from '../checkpoint/model.js';
import type { PreferenceDataConfig, RmConfig } from '../config/align.js';
import {
  type PairExample,
  type PairTokenizeStats,
  type PreferenceBatch,
  disposePreferenceBatch,
  fixedPairBatches,
  makePreferenceBatch,
  preferenceBatchSource,
  readPreferenceJsonl,
  tokenizePairs,
} from '../data/preference.js';
import { assertChatTokenizer } from '../data/sft.js';
import type { ForwardOptions, ModelConfig, Params } from '../model/gpt.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { log } from '../util/log.js';
import { withOutputDir } from './sft.js';
import { type StageModel, loadStageModel } from './stage-model.js';
import { type TrainJob, type TrainResult, stepMeans, train } from './trainer.js';

// ---------------------------------------------------------------------------------------------
// Data (shared with dpo)
// ---------------------------------------------------------------------------------------------

export interface PreferenceData {
  train: PairExample[];
  val: PairExample[];
  rows: number;
  pairs: number;
  skipped: number;
  stats: PairTokenizeStats;
}

/** Read, validate, render and fit the preference data for a model of context n_ctx. */
export function loadPreferenceData(d: PreferenceDataConfig, tokenizer: Tokenizer, nCtx: number, where: string): PreferenceData {
  assertChatTokenizer(tokenizer, where);
  const read = readPreferenceJsonl(d.path, { format: d.format, skipInvalid: d.skip_invalid });
  if (read.skipped) log().warn({ skipped: read.skipped, first: read.skippedReasons }, `skipped ${read.skipped} invalid rows of ${d.path}`);
  const pairs = d.max_rows ? read.pairs.slice(0, d.max_rows) : read.pairs;
  const { examples, stats } = tokenizePairs(tokenizer, pairs, nCtx);
  let train = examples, val: PairExample[] = [], skipped = read.skipped;
  if (d.val_path) {
    const v = readPreferenceJsonl(d.val_path, { format: d.format, skipInvalid: d.skip_invalid });
    skipped += v.skipped;
    val = tokenizePairs(tokenizer, v.pairs, nCtx).examples;
  } else if (d.val_fraction > 0 && examples.length > 1) {
    const nVal = Math.min(examples.length - 1, Math.max(1, Math.round(examples.length * d.val_fraction)));
    train = examples.slice(0, examples.length - nVal);
    val = examples.slice(examples.length - nVal);
  }
  if (stats.truncated) log().info({ truncated: stats.truncated, response_truncated: stats.responseTruncated, of: pairs.length, n_ctx: nCtx }, `truncated ${stats.truncated} of ${pairs.length} pairs to n_ctx = ${nCtx} tokens (prompt cut from the left first)`);
  log().info({ rows: read.rows, pairs: pairs.length, skipped, train_pairs: train.length, val_pairs: val.length, truncated: stats.truncated }, 'preference data');
  return { train, val, rows: read.rows, pairs: pairs.length, skipped, stats };
}

export function dataSummary(d: PreferenceData) {
  return { rows: d.rows, pairs: d.pairs, skipped: d.skipped, truncated: d.stats.truncated, train_pairs: d.train.length, val_pairs: d.val.length };
}

// ---------------------------------------------------------------------------------------------
// Loss and metrics
// ---------------------------------------------------------------------------------------------

/** Rewards of a batch's chosen rows [B] and rejected rows [B]. */
export function pairRewards(params: Params, config: ModelConfig, batch: PreferenceBatch, fwd: ForwardOptions): { chosen: tf.Tensor1D; rejected: tf.Tensor1D } {
  return tf.tidy(() => {
    const r = rewardForward(params, config, batch.inputs, batch.last, fwd);
    const [chosen, rejected] = tf.split(r, 2) as [tf.Tensor1D, tf.Tensor1D];
    return { chosen, rejected };
  });
}

/** Bradley–Terry loss of one batch; `seen` gets the batch's rewards (e.g. for the step's accuracy). */
export function rmLoss(params: Params, config: ModelConfig, batch: PreferenceBatch, o: { fwd: ForwardOptions; centerRewardsCoefficient: number; seen?(chosen: tf.Tensor1D, rejected: tf.Tensor1D): void }): tf.Scalar {
  return tf.tidy(() => {
    const { chosen, rejected } = pairRewards(params, config, batch, o.fwd);
    o.seen?.(chosen, rejected);
    return bradleyTerryLoss(chosen, rejected, { margin: batch.margin, centerRewardsCoefficient: o.centerRewardsCoefficient });
  });
}

/** Summary statistics of rewards over pairs: what `rm` logs per eval. */
export function pairMetrics(chosen: ArrayLike<number>, rejected: ArrayLike<number>): { accuracy: number; margin: number; reward_mean: number; reward_std: number; reward_chosen: number; reward_rejected: number } {
  const n = chosen.length;
  let correct = 0, margin = 0, sc = 0, sr = 0;
  for (let i = 0; i < n; i++) {
    if (chosen[i]! > rejected[i]!) correct += 1;
    margin += chosen[i]! - rejected[i]!;
    sc += chosen[i]!;
    sr += rejected[i]!;
  }
  const all = [...Array.from(chosen), ...Array.from(rejected)];
  const mean = all.reduce((a, b) => a + b, 0) / all.length;
  const std = Math.sqrt(all.reduce((a, b) => a + (b - mean) ** 2, 0) / all.length);
  return { accuracy: correct / n, margin: margin / n, reward_mean: mean, reward_std: std, reward_chosen: sc / n, reward_rejected: sr / n };
}

/** Rewards of every pair in order (no dropout). */
export function rewardsOf(params: Params, config: ModelConfig, examples: readonly PairExample[], batchSize: number, padId: number, fwd: ForwardOptions, maxBatches = Infinity): { chosen: number[]; rejected: number[] } {
  const chosen: number[] = [], rejected: number[] = [];
  for (const g of fixedPairBatches(examples, batchSize, maxBatches)) {
    const b = makePreferenceBatch(g.examples, padId, g.index);
    const r = pairRewards(params, config, b, { ...fwd, training: false });
    chosen.push(...(r.chosen.dataSync() as Float32Array));
    rejected.push(...(r.rejected.dataSync() as Float32Array));
    r.chosen.dispose();
    r.rejected.dispose();
    disposePreferenceBatch(b);
  }
  return { chosen, rejected };
}

/** Held-out accuracy, mean margin, mean/std reward and the Bradley–Terry loss (val_loss). */
export function rmEvaluate(params: Params, config: ModelConfig, examples: readonly PairExample[], batchSize: number, maxBatches: number, padId: number, fwd: ForwardOptions): Record<string, number> {
  const { chosen, rejected } = rewardsOf(params, config, examples, batchSize, padId, fwd, maxBatches);
  let loss = 0;
  for (let i = 0; i < chosen.length; i++) {
    const d = chosen[i]! - rejected[i]! - examples[i]!.margin;
    loss += Math.max(-d, 0) + Math.log1p(Math.exp(-Math.abs(d))); // −log σ(d)
  }
  return { val_loss: loss / chosen.length, ...pairMetrics(chosen, rejected) };
}

// ---------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------

export interface AlignOptions {
  /** Continue the trainer checkpoint in out_dir (same config and inputs; see src/checkpoint/output.ts). */
  resume?: boolean;
  /** Replace a checkpoint already in out_dir. */
  overwrite?: boolean;
  quiet?: boolean;
  onStep?: TrainJob<PreferenceBatch>['onStep'];
  /** Called after training, before the tensors are freed, with the trained model. */
  inspect?(model: StageModel): void;
}

export interface RmResult extends TrainResult {
  trainableParams: number;
  baseParams: number;
  lora: boolean;
  data: ReturnType<typeof dataSummary>;
}

export function rm(cfg: RmConfig, o: AlignOptions = {}): Promise<RmResult> {
  return withOutputDir(cfg, o, (resumeDir, inputs) => rmRun(cfg, o, resumeDir, inputs));
}

async function rmRun(cfg: RmConfig, o: AlignOptions, resumeDir: string | undefined, inputs: Record<string, string>): Promise<RmResult> {
  const model = loadStageModel({ base: cfg.base, lora: cfg.lora, seed: cfg.train.seed, resumeDir, head: true });
  try {
    const { config, tokenizer } = model;
    const data = loadPreferenceData(cfg.data, tokenizer, config.n_ctx, cfg.base);
    const resume = resumeDir ? loadTrainerState(resumeDir) : undefined;
    const padId = tokenizer.padId;
    // Per-step batch accuracy for metrics.jsonl (read back inside the loss: the values exist already).
    const means = stepMeans();
    const lossOpts = {
      fwd: { ...model.fwd, training: true },
      centerRewardsCoefficient: cfg.reward.center_rewards_coefficient,
      seen: (c: tf.Tensor1D, r: tf.Tensor1D) => means.add({ accuracy: tf.tidy(() => tf.mean(tf.cast(tf.greater(c, r), 'float32')).dataSync()[0]!) }),
    };
    log().info({ base: cfg.base, lora: Boolean(cfg.lora), trainable_params: model.trainableParams, resume: Boolean(resumeDir) }, 'rm');
    const result = await train<PreferenceBatch>({
      stage: 'rm',
      outDir: cfg.out_dir,
      params: model.trainable,
      loss: (batch) => rmLoss(model.params, config, batch, lossOpts),
      stepMetrics: means.take,
      batches: preferenceBatchSource(data.train, cfg.train.batch_size, padId, cfg.train.seed, (resume?.state.step ?? 0) * cfg.train.grad_accum),
      evaluate: data.val.length ? () => rmEvaluate(model.params, config, data.val, cfg.train.batch_size, cfg.train.eval_batches, padId, model.fwd) : undefined,
      save: (payload) => model.save(cfg.out_dir, { stage: 'rm', stageConfig: cfg, parentDir: cfg.base, metrics: payload.metrics, trainer: payload, inputs }),
      optim: cfg.optim,
      loop: cfg.train,
      resume,
      quiet: o.quiet,
      onStep: o.onStep,
    });
    o.inspect?.(model);
    return { ...result, trainableParams: model.trainableParams, baseParams: model.baseParams, lora: Boolean(cfg.lora), data: dataSummary(data) };
  } finally {
    model.dispose();
  }
}
