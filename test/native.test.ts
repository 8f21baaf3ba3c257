/**
 * The native kernels (native/llmctl_native.c via src/backend/native.ts) against the WASM path they replace,
 * in one process: setNativeKernels(false) runs tfjs's own kernels and our tfjs compositions. Matmuls in
 * every transpose/broadcast form and on every micro-kernel this CPU has; the model's logits and gradients
 * (GPT-2 and Llama with grouped-query heads, LoRA, frozen base) within 1e-5 relative; AdamW steps;
 * identical greedy tokens on stories260K; no tensor leaks per token or per training step.
 * The whole suite also runs with LLMCTL_NATIVE=0 (the fallback); this file then only checks that nothing
 * native is active.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { loadNative, nativeKernels, nativeStatus, setNativeKernels } from '../src/backend/native.js';
import { disposeParams } from '../src/checkpoint/model.js';
import { generate } from '../src/model/generate.js';
import { type ModelConfig, type Params, emptyCache, disposeCache, forward, paramShapes, resolveModelConfig } from '../src/model/gpt.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { crossEntropy } from '../src/train/losses.js';
import { AdamW, clipGradNorm } from '../src/train/adamw.js';
import { Rng } from '../src/util/rng.js';
import { STORIES_BIN, TOK512_PATH } from './paths.js';

const info = await initBackend('wasm');
const disabled = process.env.LLMCTL_NATIVE === '0';
const available = nativeKernels();

/** max |a − b| / max |b|: the relative error of a whole tensor (elementwise ratios blow up near zero). */
function relErr(a: Float32Array | number[], b: Float32Array | number[]): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / (scale || 1);
}

/** Run f with the native kernels on, then off; return both results as plain arrays. */
function both<T>(f: () => T): { fast: T; ref: T } {
  setNativeKernels(true);
  const fast = f();
  setNativeKernels(false);
  try {
    return { fast, ref: f() };
  } finally {
    setNativeKernels(true);
  }
}

function randn(shape: number[], rng: Rng, std = 1): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: n }, () => rng.nextNormal() * std), shape);
}

test('the backend reports which kernels run', () => {
  assert.match(info.detail, disabled ? /wasm kernels \(disabled by LLMCTL_NATIVE=0\)/ : available ? /native kernels \((avx512|avx2|c), \d threads?\)/ : /wasm kernels/);
  assert.equal(nativeStatus().startsWith('native'), available);
  if (disabled) assert.equal(available, false);
  // CI builds the addon in npm ci and sets this, so a broken build cannot pass as "skipped".
  if (process.env.LLMCTL_REQUIRE_NATIVE === '1') assert.ok(available, `native kernels required: ${nativeStatus()}`);
});

describe('native kernels against the WASM path', { skip: available ? false : `native kernels not active: ${nativeStatus()}` }, () => {
  const addon = loadNative()!;
  const rng = new Rng(3);

  test('matmul: every transpose pair, edge sizes (1, odd, > one K block), batched and broadcast, on each micro-kernel', () => {
    const best = addon.info().isa === 'avx512' ? 2 : addon.info().isa === 'avx2' ? 1 : 0;
    const shapes: [number, number, number][] = [[1, 7, 5], [3, 17, 9], [7, 33, 300], [50, 70, 64], [13, 1, 31], [97, 40, 520]];
    try {
      for (let isa = 0; isa <= best; isa++) {
        addon.forceIsa(isa);
        for (const [M, N, K] of shapes) {
          for (const ta of [false, true]) {
            for (const tb of [false, true]) {
              const a = randn(ta ? [K, M] : [M, K], rng), b = randn(tb ? [N, K] : [K, N], rng);
              const { fast, ref } = both(() => tf.tidy(() => tf.matMul(a, b, ta, tb).dataSync() as Float32Array));
              assert.ok(relErr(fast, ref) < 1e-5, `isa ${isa} ${M}x${N}x${K} ta=${ta} tb=${tb}: ${relErr(fast, ref)}`);
              tf.dispose([a, b]);
            }
          }
        }
        // Batched [4, M, K] @ [4, K, N], and a shared right operand [K, N] broadcast over the batch.
        const a = randn([4, 9, 20], rng), b = randn([4, 20, 11], rng), b1 = randn([20, 11], rng), bias = randn([11], rng);
        for (const [x, y] of [[a, b], [a, b1]] as const) {
          const { fast, ref } = both(() => tf.tidy(() => tf.matMul(x, y).dataSync() as Float32Array));
          assert.ok(relErr(fast, ref) < 1e-5, `isa ${isa} batched ${y.shape}: ${relErr(fast, ref)}`);
        }
        const a2 = randn([9, 20], rng);
        const { fast, ref } = both(() => tf.tidy(() => tf.fused.matMul({ a: a2, b: b1 as tf.Tensor2D, bias }).dataSync() as Float32Array));
        assert.ok(relErr(fast, ref) < 1e-5, `isa ${isa} fused bias: ${relErr(fast, ref)}`);
        tf.dispose([a, b, b1, bias, a2]);
      }
    } finally {
      addon.forceIsa(best);
    }
  });

  test('gather: rows and inner slices, float and int32, any axis, equal to the WASM kernel; a bad index is still tfjs\'s error', () => {
    const x = randn([5, 6, 7], rng), xi = tf.tensor2d([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [3, 3], 'int32');
    const idx = tf.tensor1d([4, 0, 0, 2], 'int32'), idx2 = tf.tensor2d([[1, 2], [2, 0]], [2, 2], 'int32');
    for (const [t, i, axis] of [[x, idx, 0], [x, idx, 1], [x, idx2, 2], [x, idx2, -1], [xi, idx2, 0], [xi, tf.tensor1d([2], 'int32'), 1]] as [tf.Tensor, tf.Tensor, number][]) {
      const { fast, ref } = both(() => tf.tidy(() => {
        const y = tf.gather(t, i, axis);
        return { shape: y.shape, data: Array.from(y.dataSync()) };
      }));
      assert.deepEqual(fast, ref, `gather axis ${axis} of ${t.shape} (${t.dtype}) by ${i.shape}`);
    }
    const bad = tf.tensor1d([5], 'int32');
    const before = tf.memory();
    assert.throws(() => tf.gather(x, bad), /index value 5 is not in \[0, 4\]/);
    assert.equal(tf.memory().numTensors, before.numTensors, 'the failed gather leaves no tensor behind');
    assert.equal(tf.memory().numBytes, before.numBytes);
    tf.dispose([x, xi, idx, idx2, bad]);
  });

  test('matmul is batch-invariant: each row of a many-row product equals that row alone, bit for bit (transposes, bias, > one K block, each micro-kernel)', () => {
    // A row alone takes the few-rows path, a tail chunk of a threaded product may too, the rest the packed
    // micro-kernel: all must round alike, or a sequence's reward / log-prob depends on its batch-mates.
    const best = addon.info().isa === 'avx512' ? 2 : addon.info().isa === 'avx2' ? 1 : 0;
    try {
      for (let isa = 0; isa <= best; isa++) {
        addon.forceIsa(isa);
        // Shapes reach every path: packed (203 rows), unpacked (37), unpacked with a B bigger than L2 (100 × 520 × 520),
        // one row, and the few-rows kernels for transposed operands.
        for (const [M, N, K] of [[203, 40, 300], [37, 70, 520], [100, 520, 520]] as [number, number, number][]) {
          for (const ta of [false, true]) {
            for (const tb of [false, true]) {
              const a = randn(ta ? [K, M] : [M, K], rng), b = randn(tb ? [N, K] : [K, N], rng) as tf.Tensor2D, bias = randn([N], rng);
              const all = tf.tidy(() => tf.fused.matMul({ a: a as tf.Tensor2D, b, transposeA: ta, transposeB: tb, bias }).dataSync() as Float32Array);
              for (const i of [0, 1, 5, M - 5, M - 2, M - 1]) {
                const row = tf.tidy(() => tf.fused.matMul({ a: (ta ? tf.slice(a, [0, i], [K, 1]) : tf.slice(a, [i, 0], [1, K])) as tf.Tensor2D, b, transposeA: ta, transposeB: tb, bias }).dataSync() as Float32Array);
                assert.deepEqual(row, all.subarray(i * N, (i + 1) * N), `isa ${isa} ${M}x${N}x${K} ta=${ta} tb=${tb} row ${i}`);
              }
              tf.dispose([a, b, bias]);
            }
          }
        }
      }
    } finally {
      addon.forceIsa(best);
    }
  });

  /** Random parameters big enough that every term matters (as model.test.ts does). */
  let made = 0;
  function params(c: ModelConfig, seed: number, lora = false): Record<string, tf.Variable> {
    const r = new Rng(seed);
    seed = ++made; // unique variable names across tests
    const out: Record<string, tf.Variable> = {};
    for (const [name, shape] of Object.entries(paramShapes(c))) {
      const gain = shape.length === 1 && !name.endsWith('.bias') ? 1 : 0;
      out[name] = tf.variable(tf.tidy(() => tf.add(randn(shape, r, 0.3), gain)), true, `${name}#${seed}`);
    }
    if (lora) {
      for (const name of Object.keys(paramShapes(c)).filter((n) => /q_proj\.weight|down_proj\.weight/.test(n))) {
        const [nin, nout] = paramShapes(c)[name]!;
        const base = name.replace(/\.weight$/, '');
        out[`${base}.lora_A`] = tf.variable(randn([nin!, 4], r, 0.3), true, `${base}.lora_A#${seed}`);
        out[`${base}.lora_B`] = tf.variable(randn([4, nout!], r, 0.3), true, `${base}.lora_B#${seed}`);
      }
    }
    return out;
  }

  const GPT2 = resolveModelConfig({ arch: 'gpt2', vocab_size: 37, n_ctx: 24, n_layer: 2, n_embd: 32, n_head: 4, n_inner: 48 });
  const LLAMA = resolveModelConfig({ arch: 'llama', vocab_size: 41, n_ctx: 24, n_layer: 2, n_embd: 32, n_head: 4, n_kv_head: 2, n_inner: 40, tie_embeddings: true });
  const LLAMA_UNTIED = { ...LLAMA, n_kv_head: 1, tie_embeddings: false };

  for (const [label, c, lora, freezeBase] of [
    ['gpt2', GPT2, false, false], ['llama (GQA 4 over 2, tied)', LLAMA, false, false], ['llama (MQA, untied)', LLAMA_UNTIED, false, false],
    ['gpt2 + LoRA, frozen base', GPT2, true, true], ['llama + LoRA', LLAMA, true, false],
  ] as const) {
    test(`${label}: logits and every gradient within 1e-5 relative`, () => {
      const p = params(c, 11, lora);
      const B = 2, T = 19;
      const tokens = tf.tensor2d(Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % c.vocab_size), [B, T], 'int32');
      const targets = tf.tensor1d(Int32Array.from({ length: B * T }, (_, i) => (i * 5 + 1) % c.vocab_size), 'int32');
      const trainable = Object.entries(p).filter(([n]) => !freezeBase || n.includes('lora')).map(([, v]) => v);
      const run = () => {
        const { value, grads } = tf.variableGrads(() => {
          const { logits } = forward(p as Params, c, tokens, { loraScale: 0.5, freezeBase });
          return crossEntropy(tf.reshape(logits, [B * T, c.vocab_size]) as tf.Tensor2D, targets);
        }, trainable);
        const logits = tf.tidy(() => forward(p as Params, c, tokens, { loraScale: 0.5, freezeBase }).logits.dataSync() as Float32Array);
        const out = { loss: value.dataSync()[0]!, logits, grads: Object.fromEntries(Object.entries(grads).map(([k, g]) => [k, g.dataSync() as Float32Array])) };
        tf.dispose([value, ...Object.values(grads)]);
        return out;
      };
      const { fast, ref } = both(run);
      assert.ok(relErr(fast.logits, ref.logits) < 1e-5, `logits: ${relErr(fast.logits, ref.logits)}`);
      assert.ok(Math.abs(fast.loss - ref.loss) / Math.abs(ref.loss) < 1e-5, `loss ${fast.loss} vs ${ref.loss}`);
      assert.deepEqual(Object.keys(fast.grads).sort(), Object.keys(ref.grads).sort());
      const global = Math.max(...Object.values(ref.grads).map((g) => Math.max(...g.map(Math.abs))));
      for (const k of Object.keys(ref.grads)) {
        // The key bias shifts every score of a query equally, which softmax ignores: its exact gradient is 0,
        // both paths give round-off, so it is compared on the scale of the largest gradient instead.
        const err = /k_proj\.bias/.test(k) ? relErr(fast.grads[k]!, ref.grads[k]!) * Math.max(...ref.grads[k]!.map(Math.abs)) / global : relErr(fast.grads[k]!, ref.grads[k]!);
        assert.ok(err < 1e-5, `d ${k}: ${err}`);
      }
      tf.dispose([tokens, targets, ...Object.values(p)]);
    });
  }

  for (const [label, c, lora] of [['llama, GQA (whole-block kernel)', LLAMA, false], ['gpt2 (whole-block kernel)', GPT2, false], ['llama + LoRA (per-op kernels)', LLAMA, true]] as const) {
    test(`KV-cache decoding, ${label}: preallocated cache written in place matches the full forward on both paths; no tensor leak per token`, () => {
      const p = params(c, 5, lora) as Params;
      const ids = Array.from({ length: 12 }, (_, i) => (i * 3 + 2) % c.vocab_size);
      const V = c.vocab_size;
      const { fast: full, ref: fullRef } = both(() => tf.tidy(() => forward(p, c, tf.tensor2d([ids], [1, ids.length], 'int32'), { loraScale: 0.5 }).logits.dataSync() as Float32Array));
      assert.ok(relErr(full, fullRef) < 1e-5, `full forward ${relErr(full, fullRef)}`);
      const cache = emptyCache(c);
      const step = (feed: number[]) => tf.tidy(() => forward(p, c, tf.tensor2d([feed], [1, feed.length], 'int32'), { cache, loraScale: 0.5 }).logits.dataSync() as Float32Array);
      const pre = step(ids.slice(0, 5)); // prefill 5, then one token at a time
      assert.equal(cache.preallocated, true);
      assert.ok(relErr(pre, fullRef.subarray(0, 5 * V)) < 1e-5, `prefill ${relErr(pre, fullRef.subarray(0, 5 * V))}`);
      let tensors = 0;
      for (let t = 5; t < ids.length; t++) {
        const row = step([ids[t]!]);
        const want = fullRef.subarray(t * V, (t + 1) * V);
        assert.ok(relErr(row, want) < 1e-5, `position ${t}: ${relErr(row, want)}`);
        if (t === 6) tensors = tf.memory().numTensors;
        if (t > 6) assert.equal(tf.memory().numTensors, tensors, `tensor count after position ${t}`);
      }
      disposeCache(cache);
      tf.dispose(Object.values(p));
    });
  }

  test('AdamW: 3 native steps give the same weights and moments as the tfjs ops (1e-6 relative)', () => {
    const cfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    const run = () => {
      const r = new Rng(9);
      const w = tf.variable(randn([6, 5], new Rng(1)), true, 'w'), b = tf.variable(randn([5], new Rng(2)), true, 'b');
      const opt = new AdamW({ w, b }, cfg);
      for (let s = 0; s < 3; s++) opt.apply({ w: randn([6, 5], r), b: randn([5], r) }, 1e-2);
      const out = [w, b, opt.m.w!, opt.v.w!, opt.m.b!, opt.v.b!].map((t) => t.dataSync() as Float32Array);
      opt.dispose();
      tf.dispose([w, b]);
      return out;
    };
    setNativeKernels(true);
    const fast = run();
    setNativeKernels(false);
    const ref = run();
    setNativeKernels(true);
    fast.forEach((f, i) => assert.ok(relErr(f, ref[i]!) < 1e-6, `tensor ${i}: ${relErr(f, ref[i]!)}`));
  });

  test('training steps (forward, backward, clip, AdamW) leave the tensor count flat; clipping sees the same norm on both paths', () => {
    const p = params(GPT2, 21);
    const names = new Map(Object.entries(p).map(([k, v]) => [v.name, k]));
    const opt = new AdamW(p, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
    const tokens = tf.tensor2d(Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 5) % GPT2.vocab_size), [2, 16], 'int32');
    const targets = tf.tensor1d(Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 7 + 1) % GPT2.vocab_size), 'int32');
    const counts: number[] = [];
    for (let step = 0; step < 4; step++) {
      const { value, grads } = tf.variableGrads(() =>
        crossEntropy(tf.reshape(forward(p as Params, GPT2, tokens, { training: true }).logits, [32, GPT2.vocab_size]) as tf.Tensor2D, targets));
      value.dispose();
      const named = Object.fromEntries(Object.entries(grads).map(([k, g]) => [names.get(k)!, g]));
      if (step === 0) {
        const { fast, ref } = both(() => clipGradNorm({ ...named }, 0));
        assert.ok(Math.abs(fast - ref) / ref < 1e-5, `grad norm ${fast} vs ${ref}`);
      }
      clipGradNorm(named, 1);
      opt.apply(named, 1e-3);
      counts.push(tf.memory().numTensors);
    }
    assert.deepEqual(counts.slice(1), [counts[1], counts[1], counts[1]], `tensor counts per step: ${counts}`);
    opt.dispose();
    tf.dispose([tokens, targets, ...Object.values(p)]);
  });

  describe('stories260K', () => {
    const model = importLlama2c(STORIES_BIN, TOK512_PATH);
    after(() => disposeParams(model.params));

    test('greedy decoding: identical tokens on both paths, prompt prefill + 60 tokens', () => {
      const prompt = model.tokenizer.encode('Once upon a time', { addBos: true });
      const opts = { max_tokens: 60, stop: [], temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };
      const { fast, ref } = both(() => generate(model, prompt, opts).ids);
      assert.equal(fast.length, 60);
      assert.deepEqual(fast, ref);
    });

    test('tensor count is flat across generations', () => {
      const prompt = model.tokenizer.encode('Lily', { addBos: true });
      const opts = { max_tokens: 20, stop: [], temperature: 0.8, top_k: 0, top_p: 0.9, repetition_penalty: 1, seed: 3 };
      generate(model, prompt, opts);
      const before = tf.memory().numTensors;
      for (let i = 0; i < 3; i++) generate(model, prompt, opts);
      assert.equal(tf.memory().numTensors, before);
    });
  });
});
