/**
 * Hugging Face layout of checkpoints (src/checkpoint/hf-names.ts): save → load round trips give identical
 * logits for both families, tied and untied, GQA, with and without biases (the GPT-2 options HF's GPT-2
 * cannot express included); the legacy layout written before still loads; config.json parsing of HF fields.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { modelConfigFromJson } from '../src/checkpoint/hf-names.js';
import { CONFIG_FILE, MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { writeSafetensors } from '../src/checkpoint/safetensors.js';
import { type ModelConfig, type Params, isLinearWeight, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { forwardLogits, tempDirs } from './helpers.js';

await initBackend('wasm');

const fresh = tempDirs('llmctl-hf-ckpt-test-');

const TOKENIZER = Tokenizer.train(['to be or not to be, that is the question'], { vocabSize: 262 });
const TOKENS = [[3, 100, 261, 7, 42, 0, 255, 9], [1, 2, 3, 4, 5, 6, 7, 8]];

const logits = (p: Params, c: ModelConfig) => forwardLogits(p, c, TOKENS);

/** Random everything (biases and norms too), so no mapping mistake hides behind a zero or a one. */
function randomParams(c: ModelConfig, seed: number): Params {
  const p = initParams(c, seed);
  let s = seed;
  for (const k of Object.keys(p)) {
    const shape = p[k]!.shape;
    p[k]!.dispose();
    p[k] = tf.randomNormal(shape, k.endsWith('.weight') && shape.length === 1 ? 1 : 0, k.endsWith('.weight') && shape.length === 2 ? 0.2 : 0.1, 'float32', ++s);
  }
  return p;
}

const base = { vocab_size: 262, n_ctx: 8, n_layer: 2, n_embd: 16 };
const CASES: Array<[string, ModelConfig]> = [
  ['gpt2, tied, biases', resolveModelConfig({ ...base, arch: 'gpt2', n_head: 2 })],
  ['gpt2, untied, no biases, GQA (zero biases and repeated k/v heads on disk)', resolveModelConfig({ ...base, arch: 'gpt2', n_head: 4, n_kv_head: 2, bias: false, tie_embeddings: false, n_inner: 40 })],
  ['llama, tied', resolveModelConfig({ ...base, arch: 'llama', n_head: 4, n_inner: 24 })],
  ['llama, untied, GQA', resolveModelConfig({ ...base, arch: 'llama', n_head: 4, n_kv_head: 2, n_inner: 24, tie_embeddings: false, rope_theta: 500000, norm_eps: 1e-6 })],
  ['llama, biases (attention_bias + mlp_bias)', resolveModelConfig({ ...base, arch: 'llama', n_head: 2, n_inner: 24, bias: true })],
];

describe('save → load: identical logits', () => {
  for (const [label, c] of CASES) {
    test(label, async () => {
      const dir = fresh('rt');
      const params = randomParams(c, 11);
      await saveCheckpoint(dir, { config: c, params, tokenizer: TOKENIZER, stage: 'test', stageConfig: {} });
      const ck = loadCheckpoint(dir);
      assert.deepEqual(ck.config, c);
      for (const [k, t] of Object.entries(params)) assert.deepEqual(ck.params[k]!.dataSync(), t.dataSync(), k);
      assert.deepEqual(logits(ck.params, c), logits(params, c));
      // The HF fields alone (project fields removed; rope_theta and vocab_size are both) give the same model where HF can express it.
      const raw = JSON.parse(readFileSync(join(dir, CONFIG_FILE), 'utf8')) as Record<string, unknown>;
      for (const k of ['arch', 'n_kv_head', 'norm_eps', 'tie_embeddings', 'bias', 'dropout', 'n_ctx', 'n_layer', 'n_embd', 'n_head', 'n_inner']) {
        if (c.arch === 'llama' || !['n_ctx', 'n_layer', 'n_embd', 'n_head', 'n_inner'].includes(k)) delete raw[k];
      }
      const fromHf = modelConfigFromJson(raw, 'config.json');
      if (c.arch === 'llama') assert.deepEqual(fromHf, c);
      else {
        // GPT-2 has no GQA and always has biases: read as plain GPT-2, it is the same function.
        assert.deepEqual({ ...fromHf, n_kv_head: c.n_kv_head, bias: c.bias }, c);
        writeFileSync(join(dir, CONFIG_FILE), JSON.stringify(raw));
        rmSync(join(dir, 'manifest.json')); // an HF directory as downloaded: no manifest to verify against
        const plain = loadCheckpoint(dir);
        const a = logits(plain.params, plain.config), b = logits(params, c);
        let maxDiff = 0;
        for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
        assert.ok(maxDiff < 1e-5, `as plain GPT-2: max |Δlogit| ${maxDiff}`);
        disposeParams(plain.params);
      }
      disposeParams(params);
      disposeParams(ck.params);
    });
  }
});

describe('the legacy layout (our names, linears [out, in]) still loads', () => {
  for (const [label, c] of [CASES[1]!, CASES[3]!]) {
    test(label, async () => {
      const dir = fresh('legacy');
      const params = randomParams(c, 5);
      await saveCheckpoint(dir, { config: c, params, tokenizer: TOKENIZER, stage: 'test', stageConfig: {} });
      // Rewrite model.safetensors and config.json as the writer before the HF mapping did.
      const legacy: Parameters<typeof writeSafetensors>[1] = {};
      for (const [k, t] of Object.entries(params)) {
        const stored = isLinearWeight(k) ? tf.transpose(t) : t.clone();
        legacy[k] = { dtype: 'F32', shape: stored.shape.slice(), data: stored.dataSync() as Float32Array };
        stored.dispose();
      }
      writeSafetensors(join(dir, MODEL_FILE), legacy, { format: 'pt' });
      rmSync(join(dir, 'manifest.json')); // its hashes describe the files we just replaced
      writeFileSync(join(dir, CONFIG_FILE), JSON.stringify({ ...c, model_type: c.arch === 'llama' ? 'llama' : 'gpt2', hidden_size: c.n_embd }));
      const ck = loadCheckpoint(dir);
      assert.deepEqual(ck.config, c);
      assert.deepEqual(logits(ck.params, c), logits(params, c));
      disposeParams(params);
      disposeParams(ck.params);
    });
  }
});

describe('config.json errors name the field', () => {
  const llama = { model_type: 'llama', vocab_size: 32, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2, max_position_embeddings: 16 };
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ ...llama, model_type: 'mixtral' }, /cfg\.json: model_type: "mixtral" is not supported/],
    [{ ...llama, rope_scaling: { type: 'linear', factor: 2 } }, /cfg\.json: rope_scaling: .* is not supported/],
    [{ ...llama, hidden_act: 'gelu' }, /cfg\.json: hidden_act: "gelu" is not supported/],
    [{ ...llama, rope_interleaved: true }, /cfg\.json: rope_interleaved: true is not supported/],
    [{ ...llama, head_dim: 8 }, /cfg\.json: head_dim: 8 != hidden_size/],
    [{ ...llama, model_type: 'mistral', sliding_window: 4 }, /cfg\.json: sliding_window: 4 < max_position_embeddings 16/],
    [{ ...llama, hidden_size: undefined }, /cfg\.json: hidden_size: missing/],
    [{ model_type: 'gpt2', vocab_size: 32, n_embd: 8, n_layer: 1, n_head: 2, n_positions: 8, activation_function: 'relu' }, /cfg\.json: activation_function: "relu" is not supported/],
  ];
  test('unsupported options and missing fields', () => {
    for (const [raw, re] of bad) assert.throws(() => modelConfigFromJson(raw, 'cfg.json'), re);
    // Defaults of each family where a field is absent.
    const c = modelConfigFromJson(llama, 'cfg.json');
    assert.deepEqual(modelConfigFromJson({ ...llama, rope_scaling: { rope_type: 'default' } }, 'cfg.json'), c);
    assert.deepEqual([c.n_kv_head, c.norm_eps, c.rope_theta, c.tie_embeddings, c.bias], [2, 1e-6, 10000, false, false]);
    const q = modelConfigFromJson({ ...llama, model_type: 'qwen2', sliding_window: 4, use_sliding_window: false, tie_word_embeddings: true }, 'cfg.json');
    assert.deepEqual([q.bias, q.tie_embeddings], [true, true]);
  });
});
