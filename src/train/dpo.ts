/**
 * `llmctl dpo`: direct preference optimization (sigmoid / IPO / hinge, label smoothing, RPO) of a policy
 * initialised from an SFT checkpoint, full or LoRA, through the shared trainer loop.
 *
 * The reference is frozen: by default the base checkpoint itself; with a LoRA policy that is the base
 * with the adapter switched off (the same tensors, no second copy); `ref:` names another checkpoint of
 * the same architecture. Reference log-probs are attached to each batch when it is drawn (outside the
 * gradient tape), either from a forward of the reference or, with `precompute_ref_logps`, from a table
 * computed once before training and saved in the checkpoint (ref_logps.safetensors), reused on resume.
 *
 * IPO follows TRL: its log-probs are per-token means; the other losses use sums over response tokens.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type DpoLossType, dpoLoss, sequenceLogps } from '../align/losses.js';
import { sha256File } from '../checkpoint/dir.js';
import { type LoadedCheckpoint, disposeParams, loadCheckpoint, loadTrainerState } from '../checkpoint/model.js';
import { readSafetensors, toFloat32, writeSafetensors } from '../checkpoint/safetensors.js';
import type { DpoConfig } from '../config/align.js';
import { type PairExample, type PreferenceBatch, disposePreferenceBatch, fixedPairBatches, makePreferenceBatch, preferenceBatchSource } from '../data/preference.js';
import { type ForwardOptions, type ModelConfig, type Params, forward } from '../model/gpt.js';
import { Progress, log } from '../util/log.js';
import { type AlignOptions, dataSummary, loadPreferenceData } from './rm.js';
import { withOutputDir } from './sft.js';
import { loadStageModel } from './stage-model.js';
import type { BatchSource, TrainResult } from './trainer.js';
import { stepMeans, train } from './trainer.js';

export const REF_LOGPS_FILE = 'ref_logps.safetensors';

/** A preference batch with the reference's log-probs of its chosen and rejected rows. */
export interface DpoBatch extends PreferenceBatch {
  refChosen: tf.Tensor1D;
  refRejected: tf.Tensor1D;
}

/** Summed response log-probs [2B] of a batch's rows under a model (per-token means when `mean`). */
export function batchLogps(params: Params, config: ModelConfig, batch: PreferenceBatch, fwd: ForwardOptions, mean: boolean): tf.Tensor1D {
  return tf.tidy(() => {
    const { logits } = forward(params, config, batch.inputs, fwd);
    const sums = sequenceLogps(logits, batch.targets, batch.mask);
    if (!mean) return sums;
    const counts = tf.sum(tf.reshape(batch.mask, [batch.inputs.shape[0], -1]), 1);
    return tf.div(sums, tf.maximum(counts, 1)) as tf.Tensor1D;
  });
}

export interface DpoLossOptions {
  beta: number;
  lossType: DpoLossType;
  labelSmoothing: number;
  rpoAlpha?: number;
  fwd: ForwardOptions;
  /** Receives the step's TRL-style figures (rewards/*, logps/*). */
  seen?(m: Record<string, number>): void;
}

/** Mean DPO loss of one batch (+ rpo_alpha · per-token NLL of the chosen responses). */
export function dpoBatchLoss(params: Params, config: ModelConfig, batch: DpoBatch, o: DpoLossOptions): tf.Scalar {
  return tf.tidy(() => {
    const ipo = o.lossType === 'ipo';
    const { logits } = forward(params, config, batch.inputs, o.fwd);
    const sums = sequenceLogps(logits, batch.targets, batch.mask);
    const counts = tf.sum(tf.reshape(batch.mask, [batch.inputs.shape[0], -1]), 1);
    const logps = ipo ? tf.div(sums, tf.maximum(counts, 1)) : sums;
    const [pc, pr] = tf.split(logps, 2) as [tf.Tensor1D, tf.Tensor1D];
    const d = dpoLoss({ policyChosen: pc, policyRejected: pr, refChosen: batch.refChosen, refRejected: batch.refRejected }, { beta: o.beta, lossType: o.lossType, labelSmoothing: o.labelSmoothing });
    let loss = tf.mean(d.losses);
    if (o.rpoAlpha) {
      const [sc] = tf.split(sums, 2);
      const [nc] = tf.split(counts, 2);
      loss = tf.add(loss, tf.mul(o.rpoAlpha, tf.div(tf.neg(tf.sum(sc!)), tf.maximum(tf.sum(nc!), 1))));
    }
    if (o.seen) {
      const v = tf.stack([
        tf.mean(d.chosenRewards), tf.mean(d.rejectedRewards),
        tf.mean(tf.cast(tf.greater(d.chosenRewards, d.rejectedRewards), 'float32')),
        tf.mean(tf.sub(d.chosenRewards, d.rejectedRewards)),
        tf.mean(pc), tf.mean(pr),
      ]).dataSync();
      o.seen({ 'rewards/chosen': v[0]!, 'rewards/rejected': v[1]!, 'rewards/accuracies': v[2]!, 'rewards/margins': v[3]!, 'logps/chosen': v[4]!, 'logps/rejected': v[5]! });
    }
    return loss as tf.Scalar;
  });
}

/** Reference log-probs of every pair in order: { chosen[i], rejected[i] } (sums, or means for IPO). */
export function referenceLogps(params: Params, config: ModelConfig, examples: readonly PairExample[], batchSize: number, padId: number, fwd: ForwardOptions, mean: boolean, onBatch?: (done: number, total: number) => void): { chosen: Float32Array; rejected: Float32Array } {
  const chosen = new Float32Array(examples.length), rejected = new Float32Array(examples.length);
  const groups = fixedPairBatches(examples, batchSize);
  for (const [k, g] of groups.entries()) {
    const b = makePreferenceBatch(g.examples, padId, g.index);
    const l = batchLogps(params, config, b, { ...fwd, training: false }, mean);
    const v = l.dataSync();
    g.index.forEach((i, k) => {
      chosen[i] = v[k]!;
      rejected[i] = v[g.index.length + k]!;
    });
    l.dispose();
    disposePreferenceBatch(b);
    onBatch?.(k + 1, groups.length);
  }
  return { chosen, rejected };
}

/** Where reference log-probs come from: a table (precomputed) or a frozen model run per batch. */
type RefSource = { table: { chosen: Float32Array; rejected: Float32Array } } | { params: Params; fwd: ForwardOptions };

function withReference(batch: PreferenceBatch, ref: RefSource, offset: number, config: ModelConfig, mean: boolean): DpoBatch {
  if ('table' in ref) {
    const at = (a: Float32Array) => tf.tensor1d(batch.index.map((i) => a[offset + i]!));
    return { ...batch, refChosen: at(ref.table.chosen), refRejected: at(ref.table.rejected) };
  }
  const l = batchLogps(ref.params, config, batch, { ...ref.fwd, training: false }, mean);
  const [refChosen, refRejected] = tf.split(l, 2) as [tf.Tensor1D, tf.Tensor1D];
  l.dispose();
  return { ...batch, refChosen, refRejected };
}

function disposeDpoBatch(b: DpoBatch): void {
  disposePreferenceBatch(b);
  b.refChosen.dispose();
  b.refRejected.dispose();
}

/** Held-out DPO loss and implicit-reward figures (TRL's eval_* keys without the prefix). */
export function dpoEvaluate(params: Params, config: ModelConfig, examples: readonly PairExample[], ref: RefSource, offset: number, batchSize: number, maxBatches: number, padId: number, o: DpoLossOptions): Record<string, number> {
  const sums: Record<string, number> = {};
  let loss = 0, n = 0;
  for (const g of fixedPairBatches(examples, batchSize, maxBatches)) {
    const b = withReference(makePreferenceBatch(g.examples, padId, g.index), ref, offset, config, o.lossType === 'ipo');
    const l = dpoBatchLoss(params, config, b, { ...o, fwd: { ...o.fwd, training: false }, seen: (m) => Object.entries(m).forEach(([k, v]) => (sums[k] = (sums[k] ?? 0) + v * g.examples.length)) });
    loss += l.dataSync()[0]! * g.examples.length;
    n += g.examples.length;
    l.dispose();
    disposeDpoBatch(b);
  }
  return { val_loss: loss / n, ...Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / n])) };
}

/** The reference must be the policy's architecture (same config.json fields). */
export function assertSameArchitecture(ref: ModelConfig, policy: ModelConfig, refDir: string, policyDir: string): void {
  const diff = (Object.keys(policy) as (keyof ModelConfig)[]).filter((k) => ref[k] !== policy[k]);
  if (diff.length) {
    throw new Error(`${join(refDir, 'config.json')}: the reference's architecture differs from the policy's (${policyDir}): ${diff.map((k) => `${k} ${ref[k]} vs ${policy[k]}`).join(', ')}`);
  }
}

/** Key of a reference table: the reference's manifest + every token of the data + the log-prob kind. */
function cacheKey(refDir: string, examples: readonly PairExample[], mean: boolean): string {
  const h = createHash('sha256');
  const m = join(refDir, 'manifest.json');
  h.update(existsSync(m) ? readFileSync(m) : refDir);
  h.update(mean ? 'mean' : 'sum');
  for (const e of examples) h.update(Int32Array.from([...e.chosen.ids, -1, e.chosen.start, -2, ...e.rejected.ids, -1, e.rejected.start, -3]));
  return h.digest('hex');
}

function readCache(dir: string | undefined, key: string, n: number): { chosen: Float32Array; rejected: Float32Array } | undefined {
  const path = dir && join(dir, REF_LOGPS_FILE);
  if (!path || !existsSync(path)) return undefined;
  const { tensors, metadata } = readSafetensors(path);
  if (metadata?.key !== key || tensors.chosen?.shape[0] !== n) {
    log().warn({ path }, 'cached reference log-probs are for other data or another reference; recomputing');
    return undefined;
  }
  return { chosen: Float32Array.from(toFloat32(tensors.chosen)), rejected: Float32Array.from(toFloat32(tensors.rejected!)) };
}

function writeCache(dir: string, key: string, t: { chosen: Float32Array; rejected: Float32Array }): void {
  writeSafetensors(join(dir, REF_LOGPS_FILE), {
    chosen: { dtype: 'F32', shape: [t.chosen.length], data: t.chosen },
    rejected: { dtype: 'F32', shape: [t.rejected.length], data: t.rejected },
  }, { key, format: 'llmctl-ref-logps' });
}

/** The reference a run uses, as its manifest records it. */
export interface DpoReference {
  path: string;
  /** sha256 of the reference's manifest.json, as the parent's is recorded. */
  sha256: string;
  mode: 'base with the adapter off' | 'checkpoint';
  precomputed: boolean;
}

export interface DpoResult extends TrainResult {
  trainableParams: number;
  baseParams: number;
  lora: boolean;
  reference: DpoReference & { cache: 'computed' | 'reused' | 'none' };
  data: ReturnType<typeof dataSummary>;
}

export async function dpo(cfg: DpoConfig, o: AlignOptions = {}): Promise<DpoResult> {
  // The manifest's config is the stage config plus the reference actually used; a resume compares it,
  // and the reference's identity (its manifest) as an input.
  const refDir = cfg.ref ?? cfg.base;
  const refManifest = join(refDir, 'manifest.json');
  const sha256 = existsSync(refManifest) ? await sha256File(refManifest) : '';
  const reference: DpoReference = { path: refDir, sha256, mode: cfg.lora && !cfg.ref ? 'base with the adapter off' : 'checkpoint', precomputed: cfg.dpo.precompute_ref_logps };
  const files: Record<string, string> = cfg.ref ? { reference: join(cfg.ref, 'manifest.json') } : {};
  return withOutputDir(cfg, o, (resumeDir, inputs) => dpoRun(cfg, o, resumeDir, inputs, reference), { config: { ...cfg, reference }, files });
}

async function dpoRun(cfg: DpoConfig, o: AlignOptions, resumeDir: string | undefined, inputs: Record<string, string>, reference: DpoReference): Promise<DpoResult> {
  const model = loadStageModel({ base: cfg.base, lora: cfg.lora, seed: cfg.train.seed, resumeDir, head: false });
  let refCk: LoadedCheckpoint | undefined;
  try {
    const { config, tokenizer } = model;
    const data = loadPreferenceData(cfg.data, tokenizer, config.n_ctx, cfg.base);
    const all = [...data.train, ...data.val]; // the table covers both: train at 0, val at train.length
    const mean = cfg.dpo.loss_type === 'ipo';
    const padId = tokenizer.padId;
    const refDir = reference.path;
    const adapterOff = Boolean(model.frozenBase) && !cfg.ref;
    // Reference params, loaded only when needed: the base with the adapter off needs no load, and a fresh
    // full run can read the reference from the policy before its first step (they are the same weights).
    const refModel = (): { params: Params; fwd: ForwardOptions } => {
      if (adapterOff) return { params: model.frozenBase!, fwd: { freezeBase: true } };
      if (!refCk) {
        refCk = loadCheckpoint(refDir);
        assertSameArchitecture(refCk.config, config, refDir, cfg.base);
      }
      return { params: refCk.params, fwd: {} };
    };
    if (cfg.ref) refModel(); // check the architecture up front
    let ref: RefSource;
    let cache: DpoResult['reference']['cache'] = 'none';
    let key = '';
    if (cfg.dpo.precompute_ref_logps) {
      key = cacheKey(refDir, all, mean);
      let table = readCache(resumeDir, key, all.length);
      if (table) cache = 'reused';
      else {
        const t0 = performance.now();
        const src = !resumeDir && !cfg.ref && !adapterOff ? { params: model.params, fwd: {} } : refModel();
        const progress = o.quiet ? undefined : new Progress('dpo: reference log-probs', Math.ceil(all.length / cfg.train.batch_size));
        table = referenceLogps(src.params, config, all, cfg.train.batch_size, padId, src.fwd, mean, (k) => progress?.update(k, { pairs: Math.min(all.length, k * cfg.train.batch_size) }));
        progress?.done(`dpo: reference log-probs of ${all.length} pairs`);
        cache = 'computed';
        log().info({ pairs: all.length, seconds: Math.round((performance.now() - t0) / 100) / 10 }, 'dpo: reference log-probs precomputed');
      }
      ref = { table };
      if (refCk) {
        disposeParams(refCk.params);
        refCk = undefined;
      }
    } else {
      ref = refModel();
    }
    const resume = resumeDir ? loadTrainerState(resumeDir) : undefined;
    const means = stepMeans();
    const lossOpts: DpoLossOptions = {
      beta: cfg.dpo.beta,
      lossType: cfg.dpo.loss_type,
      labelSmoothing: cfg.dpo.label_smoothing,
      rpoAlpha: cfg.dpo.rpo_alpha,
      fwd: { ...model.fwd, training: true },
      seen: means.add,
    };
    const pairs = preferenceBatchSource(data.train, cfg.train.batch_size, padId, cfg.train.seed, (resume?.state.step ?? 0) * cfg.train.grad_accum);
    const batches: BatchSource<DpoBatch> = {
      next: (rng) => withReference(pairs.next(rng), ref, 0, config, mean),
      tokens: (b) => pairs.tokens(b),
      dispose: disposeDpoBatch,
    };
    log().info({ base: cfg.base, reference: refDir, ref_mode: reference.mode, lora: Boolean(cfg.lora), trainable_params: model.trainableParams, loss: cfg.dpo.loss_type, beta: cfg.dpo.beta, precompute: cfg.dpo.precompute_ref_logps, resume: Boolean(resumeDir) }, 'dpo');
    const table = 'table' in ref ? ref.table : undefined;
    const result = await train<DpoBatch>({
      stage: 'dpo',
      outDir: cfg.out_dir,
      params: model.trainable,
      loss: (batch) => dpoBatchLoss(model.params, config, batch, lossOpts),
      stepMetrics: means.take,
      batches,
      evaluate: data.val.length ? () => dpoEvaluate(model.params, config, data.val, ref, data.train.length, cfg.train.batch_size, cfg.train.eval_batches, padId, { ...lossOpts, seen: undefined }) : undefined,
      save: (payload) =>
        model.save(cfg.out_dir, {
          stage: 'dpo',
          stageConfig: { ...cfg, reference },
          parentDir: cfg.base,
          metrics: payload.metrics,
          trainer: payload,
          inputs,
          extra: table ? (tmp) => writeCache(tmp, key, table) : undefined,
        }),
      optim: cfg.optim,
      loop: cfg.train,
      resume,
      quiet: o.quiet,
      onStep: o.onStep,
    });
    o.inspect?.(model);
    return { ...result, trainableParams: model.trainableParams, baseParams: model.baseParams, lora: Boolean(cfg.lora), reference: { ...reference, cache }, data: dataSummary(data) };
  } finally {
    if (refCk) disposeParams(refCk.params);
    model.dispose();
  }
}
