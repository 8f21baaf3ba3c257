/**
 * Reward models: the shared transformer plus a scalar head read at the last response token, as Hugging
 * Face's *ForSequenceClassification with num_labels = 1: `score.weight` [1, n_embd], no bias, applied to
 * the final (post-ln_f) hidden state. `llmctl rm` trains it; `rm score`, PPO and the arena score with
 * the functions below.
 *
 * Scoring API (what PPO and the arena call):
 *   const rm = loadRewardModel('runs/rm');                 // full checkpoint, or a LoRA reward adapter
 *   scoreConversations(rm, [{ prompt: [{role:'user', content}], response }]) → number[]
 *   scoreSequences(rm, [tokenIds…]) → number[]             // ids already rendered, ending at <|im_end|>
 *   rm.dispose();
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type LoadedCheckpoint, disposeParams, loadCheckpoint } from '../checkpoint/model.js';
import { fitPair, readPreferenceJsonl, renderPair } from '../data/preference.js';
import { readSftJsonl } from '../data/sft.js';
import { type ForwardOptions, type ModelConfig, type Params, forward } from '../model/gpt.js';
import { ADAPTER_CONFIG_FILE, checkAdapterTargets, loadAdapter, loraScale } from '../model/lora.js';
import type { ChatMessage, Tokenizer } from '../tokenizer/index.js';
import { Rng } from '../util/rng.js';

export const SCORE = 'score.weight';

/** A fresh head: N(0, 0.02) like HF's initializer_range, so rewards start near zero. */
export function initScoreHead(config: ModelConfig, seed: number): tf.Tensor2D {
  const rng = new Rng(seed + 7919);
  const w = new Float32Array(config.n_embd);
  for (let i = 0; i < w.length; i++) w[i] = 0.02 * rng.nextNormal();
  return tf.tensor2d(w, [1, config.n_embd]);
}

/**
 * Rewards [R] of a batch of right-padded rows: inputs [R, T] int32, last [R·T] float with a single 1 per
 * row at the position whose final hidden state the head reads. `params` holds the transformer (and any
 * LoRA entries) plus `score.weight`.
 */
export function rewardForward(params: Params, config: ModelConfig, inputs: tf.Tensor2D, last: tf.Tensor1D, fwd: ForwardOptions = {}): tf.Tensor1D {
  return tf.tidy(() => {
    const [R, T] = inputs.shape;
    const { hidden } = forward(params, config, inputs, { ...fwd, returnHidden: true });
    const h = tf.reshape(hidden!, [R * T, config.n_embd]);
    // score · h at every position (an [N, d] × [1, d] product, cheaper on WASM than a transposed matmul),
    // then pick each row's one position.
    const s = tf.sum(tf.mul(h, params[SCORE]!), -1);
    return tf.sum(tf.reshape(tf.mul(s, last), [R, T]), 1) as tf.Tensor1D;
  });
}

export interface RewardModel {
  dir: string;
  config: ModelConfig;
  tokenizer: Tokenizer;
  /** Transformer + score.weight (+ LoRA entries for an adapter reward model). */
  params: Params;
  fwd: ForwardOptions;
  dispose(): void;
}

/** Load a reward model written by `llmctl rm`: a full checkpoint with score.weight, or a LoRA reward adapter. */
export function loadRewardModel(dir: string): RewardModel {
  const notRm = (where: string) => new Error(`${where}: not a reward model (no '${SCORE}'; train one with llmctl rm)`);
  if (!existsSync(join(dir, 'model.safetensors')) && existsSync(join(dir, ADAPTER_CONFIG_FILE))) {
    const { lora, config: acfg, baseModel, heads } = loadAdapter(dir);
    const drop = () => (disposeParams(lora), disposeParams(heads));
    if (!heads[SCORE]) {
      drop();
      throw notRm(join(dir, 'adapter_model.safetensors'));
    }
    let base: LoadedCheckpoint;
    try {
      if (!baseModel) throw new Error(`${join(dir, ADAPTER_CONFIG_FILE)}: no base_model_name_or_path to load the base model from`);
      base = loadCheckpoint(baseModel);
    } catch (err) {
      drop();
      throw err;
    }
    const params = { ...base.params, ...lora, ...heads };
    try {
      checkAdapterTargets(base.params, lora, dir, `the base model ${baseModel}`);
      checkHead(heads[SCORE]!, base.config, join(dir, 'adapter_model.safetensors'));
    } catch (err) {
      disposeParams(params);
      throw err;
    }
    return { dir, config: base.config, tokenizer: base.tokenizer, params, fwd: { loraScale: loraScale(acfg) }, dispose: () => disposeParams(params) };
  }
  const ck = loadCheckpoint(dir, { heads: true });
  const score = ck.heads?.[SCORE];
  if (!score) {
    disposeParams(ck.params);
    throw notRm(join(dir, 'model.safetensors'));
  }
  const params = { ...ck.params, [SCORE]: score };
  return { dir, config: ck.config, tokenizer: ck.tokenizer, params, fwd: {}, dispose: () => disposeParams(params) };
}

function checkHead(w: tf.Tensor, config: ModelConfig, where: string): void {
  if (w.shape.join(',') !== `1,${config.n_embd}`) throw new Error(`${where}: '${SCORE}' has shape [${w.shape}] but the model needs [1,${config.n_embd}]`);
}

/**
 * Rewards of token sequences, each scored at its last token (for a ChatML response that is its
 * <|im_end|>). Sequences longer than n_ctx keep their last n_ctx tokens.
 */
export function scoreSequences(rm: Pick<RewardModel, 'params' | 'config' | 'tokenizer' | 'fwd'>, sequences: readonly number[][], batchSize = 16): number[] {
  const out: number[] = [];
  const n = rm.config.n_ctx;
  for (let s = 0; s < sequences.length; s += batchSize) {
    const rows = sequences.slice(s, s + batchSize).map((ids) => {
      if (ids.length === 0) throw new Error(`scoreSequences: sequence ${s} is empty`);
      return ids.length > n ? ids.slice(ids.length - n) : ids;
    });
    const T = Math.max(...rows.map((r) => r.length));
    const x = new Int32Array(rows.length * T).fill(rm.tokenizer.padId), last = new Float32Array(rows.length * T);
    rows.forEach((r, b) => {
      x.set(r, b * T);
      last[b * T + r.length - 1] = 1;
    });
    const inputs = tf.tensor2d(x, [rows.length, T], 'int32'), lastT = tf.tensor1d(last);
    const r = rewardForward(rm.params, rm.config, inputs, lastT, { ...rm.fwd, training: false });
    out.push(...(r.dataSync() as Float32Array));
    for (const t of [inputs, lastT, r]) t.dispose();
  }
  return out;
}

/** Render (prompt, response) with the chat template exactly as `rm` trains on it, and score each. */
export function scoreConversations(rm: Pick<RewardModel, 'params' | 'config' | 'tokenizer' | 'fwd'>, items: readonly { prompt: ChatMessage[]; response: string }[], batchSize = 16): number[] {
  const seqs = items.map(({ prompt, response }) => {
    const r = renderPair(rm.tokenizer, { prompt, chosen: response, rejected: response });
    return fitPair(r.prompt, r.chosen, r.chosen, rm.config.n_ctx).chosen.ids;
  });
  return scoreSequences(rm, seqs, batchSize);
}

export type ScoredRow = { line: number; chosen: number; rejected: number } | { line: number; reward: number };

/**
 * Score every row of a JSONL file: preference rows (any format of src/data/preference.ts) give
 * {line, chosen, rejected}; SFT rows (Alpaca or chat) give {line, reward} for their last assistant turn.
 */
export function scoreFile(rm: RewardModel, path: string, o: { skipInvalid?: boolean; batchSize?: number } = {}): ScoredRow[] {
  if (!existsSync(path)) throw new Error(`${path}: data file not found`);
  const first = readFileSync(path, 'utf8').split('\n').find((l) => l.trim());
  let firstRow: unknown;
  try {
    firstRow = JSON.parse(first ?? 'null');
  } catch {
    throw new Error(`${path}: line 1: not valid JSON`);
  }
  const isPreference = typeof firstRow === 'object' && firstRow !== null && ['chosen', 'rejected', 'responses', 'conversations'].some((k) => k in firstRow);
  if (isPreference) {
    const { pairs } = readPreferenceJsonl(path, { skipInvalid: o.skipInvalid });
    const items = pairs.flatMap((p) => [{ prompt: p.prompt, response: p.chosen }, { prompt: p.prompt, response: p.rejected }]);
    const r = scoreConversations(rm, items, o.batchSize);
    return pairs.map((p, i) => ({ line: p.line, chosen: r[2 * i]!, rejected: r[2 * i + 1]! }));
  }
  const { rows } = readSftJsonl(path, { skipInvalid: o.skipInvalid });
  const items = rows.map((row) => {
    const at = row.messages.map((m) => m.role).lastIndexOf('assistant');
    return { prompt: row.messages.slice(0, at), response: row.messages[at]!.content };
  });
  const r = scoreConversations(rm, items, o.batchSize);
  return rows.map((row, i) => ({ line: row.line, reward: r[i]! }));
}
