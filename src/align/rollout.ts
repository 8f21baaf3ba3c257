/**
 * The rollout half of RL fine-tuning: sample responses for a batch of prompts (generateBatch: one KV
 * cache, left-padded prompts), lay prompt + response out as one token matrix, and read per-token
 * log-probs (and hidden states for a value head) of any role's model on rows of that matrix.
 *
 * Every forward over a rollout uses the same layout (same width, same left padding), with or without
 * gradient, so the policy's log-probs at the first PPO mini-batch reproduce the rollout's exactly.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type BatchGenerateOptions, type LanguageModel, generateBatch } from '../model/generate.js';
import { type ForwardOptions, type ModelConfig, type Params, forward } from '../model/gpt.js';
import { linear, oneHotFloat } from '../model/kernels.js';
import type { Rng } from '../util/rng.js';
import { entropyFromLogProbs } from './rl-losses.js';

/**
 * Sequences as the model sees them: row i = leftPad[i] pads, its prompt (ending at column promptWidth),
 * its response, then pads. Response token j of every row sits at column promptWidth + j.
 */
export interface Layout {
  tokens: number[][]; // [N, promptWidth + responseWidth]
  leftPad: number[];
  promptWidth: number;
  responseWidth: number;
  /** [N, responseWidth]: 1 on response tokens (the stop token included), 0 on the padding after it. */
  mask: number[][];
}

export function layoutSequences(prompts: number[][], responses: number[][], padId: number): Layout {
  const P = Math.max(...prompts.map((p) => p.length));
  const R = Math.max(1, ...responses.map((r) => r.length));
  return {
    tokens: prompts.map((p, i) => [...Array<number>(P - p.length).fill(padId), ...p, ...responses[i]!, ...Array<number>(R - responses[i]!.length).fill(padId)]),
    leftPad: prompts.map((p) => P - p.length),
    promptWidth: P,
    responseWidth: R,
    mask: responses.map((r) => Array.from({ length: R }, (_, j) => (j < r.length ? 1 : 0))),
  };
}

export interface Rollout extends Layout {
  prompts: number[][];
  responses: number[][];
  /** Whether each response ended with a stop token (EOS / <|im_end|>). */
  finished: boolean[];
}

export type SamplingOptions = Omit<BatchGenerateOptions, 'rng' | 'forward' | 'stopIds'>;

/** Sample one response per prompt from the policy, drawing from rng. */
export function sampleRollout(policy: LanguageModel, prompts: number[][], o: SamplingOptions & { rng: Rng; forward?: ForwardOptions }): Rollout {
  const gen = generateBatch(policy, prompts, o);
  return { ...layoutSequences(prompts, gen.ids, policy.tokenizer.padId), prompts, responses: gen.ids, finished: gen.finished };
}

/** Rows of a rollout as model inputs: tokens minus the last column (no token follows it) and the response targets. */
export interface RowBatch {
  rows: readonly number[];
  inputs: tf.Tensor2D; // [rows, W−1] int32
  targets: tf.Tensor1D; // [rows·R] int32
  leftPad: number[];
}

/**
 * Build a RowBatch. Under tf.variableGrads, build it OUTSIDE the differentiated function and dispose it
 * after: tfjs runs that function in its own tidy before the backward pass, and the embedding gradient
 * reads the token ids.
 */
export function rowBatch(layout: Layout, rows: readonly number[]): RowBatch {
  const P = layout.promptWidth, R = layout.responseWidth, W = P + R;
  return {
    rows,
    inputs: tf.tensor2d(rows.map((i) => layout.tokens[i]!.slice(0, W - 1)), [rows.length, W - 1], 'int32'),
    targets: tf.tensor1d(rows.flatMap((i) => layout.tokens[i]!.slice(P)), 'int32'),
    leftPad: rows.map((i) => layout.leftPad[i]!),
  };
}

export function disposeRowBatch(b: RowBatch): void {
  tf.dispose([b.inputs, b.targets]);
}

/** Rows of a per-token matrix (mask, advantages, old log-probs) as a [rows, R] tensor. */
export function pickRows(x: number[][], rows: readonly number[]): tf.Tensor2D {
  return tf.tensor2d(rows.map((i) => x[i]!), [rows.length, x[rows[0]!]!.length]);
}

export interface ResponseForward {
  /** log π(token) of each response token under softmax(logits / temperature), [rows, R]. */
  logp: tf.Tensor2D;
  /** Mean entropy per token of that distribution, [rows, R] (when asked). */
  entropy?: tf.Tensor2D;
  /** Final hidden state at the position that predicts each response token, [rows, R, n_embd] (when asked). */
  hidden?: tf.Tensor3D;
}

/**
 * One forward of `params` over rows of a rollout. The logits at column promptWidth−1+j predict response
 * token j; like TRL they are divided by the sampling temperature, so log-probs match the sampled distribution.
 * Call it inside a tf.tidy or tf.variableGrads scope (it frees nothing itself).
 */
export function responseForward(
  params: Params,
  config: ModelConfig,
  layout: Layout,
  batch: RowBatch,
  o: { temperature: number; forward?: ForwardOptions; entropy?: boolean; hidden?: boolean },
): ResponseForward {
  const P = layout.promptWidth, R = layout.responseWidth, V = config.vocab_size, n = batch.rows.length;
  const out = forward(params, config, batch.inputs, { ...o.forward, leftPad: batch.leftPad, returnHidden: o.hidden });
  const logits = tf.div(tf.slice(out.logits, [0, P - 1, 0], [n, R, V]), o.temperature);
  const logSoftmax = tf.logSoftmax(tf.reshape(logits, [n * R, V]));
  const logp = tf.reshape(tf.sum(tf.mul(logSoftmax, oneHotFloat(batch.targets, V)), -1), [n, R]) as tf.Tensor2D;
  const result: ResponseForward = { logp };
  if (o.entropy) result.entropy = tf.reshape(entropyFromLogProbs(logSoftmax), [n, R]) as tf.Tensor2D;
  if (o.hidden) result.hidden = tf.slice(out.hidden!, [0, P - 1, 0], [n, R, config.n_embd]) as tf.Tensor3D;
  return result;
}

/** Value head: V = h·w + b per position, hidden [rows, R, d] → [rows, R]. */
export function valueHead(hidden: tf.Tensor3D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  return tf.tidy(() => {
    const [n, R, d] = hidden.shape;
    return tf.reshape(linear(tf.reshape(hidden, [n * R, d]) as tf.Tensor2D, w, b), [n, R]) as tf.Tensor2D;
  });
}

/** Row i's values as numbers. */
export function toRows(t: tf.Tensor2D): number[][] {
  return t.arraySync();
}

/** Run f without gradient on the rows of a layout in chunks of `chunk` (bounded memory); collect its [rows, R] outputs as numbers. */
export function chunked<K extends string>(layout: Layout, chunk: number, f: (batch: RowBatch) => Partial<Record<K, tf.Tensor2D>>): Record<K, number[][]> {
  const out = {} as Record<K, number[][]>, n = layout.tokens.length;
  for (let s = 0; s < n; s += chunk) {
    const rows = Array.from({ length: Math.min(chunk, n - s) }, (_, j) => s + j);
    const part = tf.tidy(() => {
      const r = f(rowBatch(layout, rows));
      return Object.fromEntries(Object.entries(r).filter(([, t]) => t !== undefined)) as Record<string, tf.Tensor2D>;
    });
    for (const [k, t] of Object.entries(part)) {
      (out[k as K] ??= []).push(...toRows(t));
      t.dispose();
    }
  }
  return out;
}
