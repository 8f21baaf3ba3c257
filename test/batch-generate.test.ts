/** Left-padded batches (ForwardOptions.leftPad) and batched KV-cache sampling (generateBatch). */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { generate, generateBatch } from '../src/model/generate.js';
import { type ModelConfig, emptyCache, disposeCache, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { Rng } from '../src/util/rng.js';
import { disposeRowBatch, layoutSequences, responseForward, rowBatch } from '../src/align/rollout.js';
import { STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');

const greedy = { temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Logits of each prompt alone vs. in a left-padded batch, at the real positions. */
function checkLeftPad(config: ModelConfig, prompts: number[][]): number {
  const params = initParams(config, 11);
  const P = Math.max(...prompts.map((p) => p.length));
  const leftPad = prompts.map((p) => P - p.length);
  const batch = tf.tensor2d(prompts.map((p, i) => [...Array<number>(leftPad[i]!).fill(0), ...p]), [prompts.length, P], 'int32');
  const { logits } = forward(params, config, batch, { leftPad });
  const all = logits.arraySync() as number[][][];
  let worst = 0;
  prompts.forEach((p, i) => {
    const alone = forward(params, config, tf.tensor2d([p], [1, p.length], 'int32')).logits;
    const a = Float32Array.from((alone.arraySync() as number[][][])[0]!.flat());
    const b = Float32Array.from(all[i]!.slice(leftPad[i]!).flat());
    worst = Math.max(worst, maxAbsDiff(a, b));
    alone.dispose();
  });
  tf.dispose([batch, logits, ...Object.values(params)]);
  return worst;
}

describe('left padding', () => {
  const prompts = [[5, 9, 2, 7, 1], [3, 4], [8, 8, 8, 1]];
  test('gpt2 (learned positions): each padded row equals the row alone', () => {
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 32, n_ctx: 16, n_layer: 2, n_embd: 16, n_head: 2 });
    assert.ok(checkLeftPad(c, prompts) < 1e-5);
  });
  test('llama (RoPE, GQA): each padded row equals the row alone', () => {
    const c = resolveModelConfig({ arch: 'llama', vocab_size: 32, n_ctx: 16, n_layer: 2, n_embd: 16, n_head: 4, n_kv_head: 2 });
    assert.ok(checkLeftPad(c, prompts) < 1e-5);
  });
  test('without padding the mask changes nothing: leftPad all zeros gives the unpadded logits bit for bit', () => {
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 32, n_ctx: 16, n_layer: 1, n_embd: 16, n_head: 2 });
    const params = initParams(c, 2);
    const x = tf.tensor2d([[1, 2, 3], [4, 5, 6]], [2, 3], 'int32');
    const a = forward(params, c, x).logits, b = forward(params, c, x, { leftPad: [0, 0] }).logits;
    assert.deepEqual(a.dataSync(), b.dataSync());
    tf.dispose([x, a, b, ...Object.values(params)]);
  });
  test('a padded incremental decode (KV cache) matches the full padded forward', () => {
    const c = resolveModelConfig({ arch: 'llama', vocab_size: 32, n_ctx: 16, n_layer: 1, n_embd: 16, n_head: 2 });
    const params = initParams(c, 4);
    const rows = [[0, 0, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], leftPad = [2, 0];
    const full = forward(params, c, tf.tensor2d(rows, [2, 6], 'int32'), { leftPad }).logits;
    const cache = emptyCache(c);
    forward(params, c, tf.tensor2d(rows.map((r) => r.slice(0, 5)), [2, 5], 'int32'), { leftPad, cache }).logits.dispose();
    const step = forward(params, c, tf.tensor2d(rows.map((r) => r.slice(5)), [2, 1], 'int32'), { leftPad, cache }).logits;
    const lastFull = tf.slice(full, [0, 5, 0], [2, 1, 32]);
    assert.ok(maxAbsDiff(lastFull.dataSync() as Float32Array, step.dataSync() as Float32Array) < 1e-5);
    disposeCache(cache);
    tf.dispose([full, step, lastFull, ...Object.values(params)]);
  });
});

describe('generateBatch', () => {
  const stories = importLlama2c(STORIES_BIN, TOK512_PATH);
  const enc = (s: string) => stories.tokenizer.encode(s, { addBos: true });
  const prompts = [enc('Once upon a time'), enc('Lily'), enc('The cat sat on the mat and')];

  test('greedy batched rows equal one-at-a-time generate() (stories260K, different prompt lengths)', () => {
    const batch = generateBatch(stories, prompts, { ...greedy, max_new_tokens: 20 });
    prompts.forEach((p, i) => {
      const alone = generate(stories, p, { ...greedy, max_tokens: 20, stop: [] });
      // generate() leaves the stop token out of ids; generateBatch keeps it at the end.
      const ids = batch.finished[i] ? batch.ids[i]!.slice(0, -1) : batch.ids[i]!;
      assert.deepEqual(ids, alone.ids, `row ${i}`);
      assert.equal(batch.finished[i], alone.finishReason === 'stop');
    });
  });

  test('rows that stop early end with their stop token and are dropped; others run to max_new_tokens', () => {
    const bos = stories.tokenizer.bosId!;
    const g = generateBatch(stories, prompts, { ...greedy, max_new_tokens: 12, stopIds: [bos, stories.tokenizer.encode(' the')[0]!] });
    for (let i = 0; i < prompts.length; i++) {
      if (g.finished[i]) assert.ok(g.ids[i]!.length <= 12);
      else assert.equal(g.ids[i]!.length, 12);
    }
  });

  test('a shared seeded Rng makes sampling reproducible; tensors freed', () => {
    const o = { temperature: 1, top_k: 0, top_p: 0.9, repetition_penalty: 1, max_new_tokens: 10 };
    generateBatch(stories, prompts, { ...o, rng: new Rng(1) });
    const before = tf.memory().numTensors;
    const a = generateBatch(stories, prompts, { ...o, rng: new Rng(7) });
    const b = generateBatch(stories, prompts, { ...o, rng: new Rng(7) });
    assert.deepEqual(a, b);
    assert.equal(tf.memory().numTensors, before);
  });

  test('prompt + max_new_tokens beyond the context is an error naming both', () => {
    assert.throws(() => generateBatch(stories, prompts, { ...greedy, max_new_tokens: 10_000 }), /exceeds the context length/);
  });
});

describe('rollout layout', () => {
  test('prompts right-aligned at one column, responses after them, padding masked; inputs drop the last column', () => {
    const l = layoutSequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], 0);
    assert.deepEqual(l.tokens, [[1, 2, 3, 5, 6, 0], [0, 0, 4, 7, 8, 9]]);
    assert.deepEqual([l.leftPad, l.promptWidth, l.responseWidth, l.mask], [[0, 2], 3, 3, [[1, 1, 0], [1, 1, 1]]]);
    const b = rowBatch(l, [1, 0]);
    assert.deepEqual(b.inputs.arraySync(), [[0, 0, 4, 7, 8], [1, 2, 3, 5, 6]]);
    assert.deepEqual(Array.from(b.targets.dataSync()), [7, 8, 9, 5, 6, 0]);
    disposeRowBatch(b);
  });

  test('per-token log-probs of a padded row equal log softmax(logits / T) of the row alone', () => {
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 16, n_ctx: 16, n_layer: 1, n_embd: 8, n_head: 2 });
    const params = initParams(c, 9);
    const l = layoutSequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], 0);
    const b = rowBatch(l, [0, 1]);
    const logp = tf.tidy(() => responseForward(params, c, l, b, { temperature: 0.7 }).logp.arraySync());
    const alone = tf.tidy(() => tf.logSoftmax(tf.div(forward(params, c, tf.tensor2d([[4, 7, 8]], [1, 3], 'int32')).logits, 0.7)).arraySync() as number[][][]);
    [7, 8, 9].forEach((tok, j) => assert.ok(Math.abs(logp[1]![j]! - alone[0]![j]![tok]!) < 1e-5, `token ${j}`));
    disposeRowBatch(b);
    tf.dispose(Object.values(params));
  });
});
