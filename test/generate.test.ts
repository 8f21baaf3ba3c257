/** Sampling and generation: hand-computed sampler decisions, stop strings, context shift, no tensor leak per request. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { generate } from '../src/model/generate.js';
import { resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { Sampler, applyRepetitionPenalty, sampleMultinomial, sampleTopP, softmax } from '../src/model/sample.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');

const greedy = { temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };

describe('sampler', () => {
  test('softmax of [0, ln 3] is [0.25, 0.75]', () => {
    const p = softmax(Float32Array.from([0, Math.log(3)]));
    assert.ok(Math.abs(p[0]! - 0.25) < 1e-7 && Math.abs(p[1]! - 0.75) < 1e-7, `got ${p}`);
  });

  test('multinomial walks the cdf: coin 0.3 over [0.25, 0.5, 0.25] picks index 1, coin 0.8 picks 2', () => {
    const p = Float32Array.from([0.25, 0.5, 0.25]);
    assert.equal(sampleMultinomial(p, 0.3), 1); // cdf 0.25, 0.75 > 0.3
    assert.equal(sampleMultinomial(p, 0.8), 2); // cdf 0.75 < 0.8 < 1.0
    assert.equal(sampleMultinomial(p, 0.1), 0);
  });

  test('top-p 0.6 over [0.1, 0.5, 0.3, 0.1] keeps {0.5, 0.3} and rescales the coin by their mass 0.8', () => {
    const p = Float32Array.from([0.1, 0.5, 0.3, 0.1]);
    // sorted: 0.5 (id 1), 0.3 (id 2): mass 0.8 > 0.6 after two. r = coin·0.8.
    assert.equal(sampleTopP(p, 0.6, 0.5), 1); // r 0.4 < 0.5
    assert.equal(sampleTopP(p, 0.6, 0.7), 2); // r 0.56 ≥ 0.5, < 0.8
    assert.equal(sampleTopP(p, 0.6, 0.99), 2); // never ids 0 or 3
  });

  test('repetition penalty divides positive and multiplies negative logits of seen tokens (CTRL)', () => {
    const l = Float32Array.from([2, -2, 1]);
    applyRepetitionPenalty(l, [0, 1, 1], 2);
    assert.deepEqual(Array.from(l), [1, -4, 1]);
  });

  test('top-k 1 is greedy whatever the temperature; temperature 0 is argmax', () => {
    const logits = Float32Array.from([0.1, 3, 2.9, -1]);
    const s = new Sampler({ temperature: 5, top_k: 1, top_p: 1, repetition_penalty: 1, seed: 9 });
    for (let i = 0; i < 20; i++) assert.equal(s.sample(logits), 1);
    assert.equal(new Sampler(greedy).sample(logits), 1);
  });

  test('top-k 2 never picks outside the two best; the same seed repeats the same draws', () => {
    const logits = Float32Array.from([0, 1, 1.2, 0.5]);
    const draw = (seed: number) => {
      const s = new Sampler({ temperature: 1, top_k: 2, top_p: 1, repetition_penalty: 1, seed });
      return Array.from({ length: 50 }, () => s.sample(logits));
    };
    const a = draw(3);
    assert.ok(a.every((id) => id === 1 || id === 2), `got ${a}`);
    assert.ok(a.includes(1) && a.includes(2), 'both kept tokens are drawn');
    assert.deepEqual(draw(3), a);
    assert.notDeepEqual(draw(4), a);
  });
});

describe('generate', () => {
  const stories = importLlama2c(STORIES_BIN, TOK512_PATH);
  const prompt = stories.tokenizer.encode('Once upon a time', { addBos: true });

  test('a stop string cuts the text before it and ends with finish_reason stop', () => {
    const full = generate(stories, prompt, { ...greedy, max_tokens: 40, stop: [] });
    assert.ok(full.text.includes('Lily'), full.text);
    const cut = generate(stories, prompt, { ...greedy, max_tokens: 40, stop: ['Lily'] });
    assert.equal(cut.finishReason, 'stop');
    assert.equal(cut.text, full.text.slice(0, full.text.indexOf('Lily')));
  });

  test('streamed pieces (onText) concatenate to the returned text, stop strings held back', () => {
    const pieces: string[] = [];
    const g = generate(stories, prompt, { ...greedy, max_tokens: 30, stop: ['park'], onText: (t) => pieces.push(t) });
    assert.equal(pieces.join(''), g.text);
    assert.ok(!g.text.includes('park'));
  });

  test('max_tokens bounds the output and finish_reason is length', () => {
    const g = generate(stories, prompt, { ...greedy, max_tokens: 7, stop: [] });
    assert.equal(g.ids.length, 7);
    assert.equal(g.finishReason, 'length');
  });

  test('repeated requests leak no tensors (KV cache freed each time)', () => {
    generate(stories, prompt, { ...greedy, max_tokens: 5, stop: [] });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) generate(stories, prompt, { ...greedy, max_tokens: 12, stop: [] });
    assert.equal(tf.memory().numTensors, before);
  });

  test('generation past the context length shifts the window instead of failing or stopping', () => {
    const config = resolveModelConfig({ arch: 'gpt2', vocab_size: 259, n_ctx: 16, n_layer: 1, n_embd: 16, n_head: 2 });
    const params = initParams(config, 5);
    const tokenizer = Tokenizer.train(['hello world'], { vocabSize: 259 });
    const before = tf.memory().numTensors;
    const g = generate({ params, config, tokenizer }, tokenizer.encode('hello'), { ...greedy, max_tokens: 40, stop: [] });
    assert.ok(g.ids.length === 40 || g.finishReason === 'stop', `generated ${g.ids.length}, ${g.finishReason}`);
    assert.equal(tf.memory().numTensors, before);
    for (const t of Object.values(params)) t.dispose();
  });
});
