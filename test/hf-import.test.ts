/**
 * `llmctl import --format hf`: Hugging Face model directories written by hand here — HF tensor names,
 * nn.Linear [out, in] (Llama) and Conv1D [in, out] with fused c_attn (GPT-2), F16 and BF16 tensors, a
 * two-shard index — import with the logits that an independent float64 forward over the HF tensors gives.
 * Export → import round trips for both families, tied and untied, GQA; one-line errors naming the field.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { importHf } from '../src/checkpoint/hf-import.js';
import { CONFIG_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { type TensorData, fromFloat32, toFloat32, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { type ModelConfig, type Params, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { REPO, TOK512_PATH } from './paths.js';

await initBackend('wasm');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-hf-import-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;
const fresh = (name: string) => join(TMP, `${name}-${n++}`);

// ------------------------------------------------------------------ an independent float64 reference

type Tensors = Record<string, TensorData>;
const f64 = (t: TensorData) => Float64Array.from(toFloat32(t));

/** y[o] = Σ_i x[i]·W[o, i] (nn.Linear, W [out, in]) or Σ_i x[i]·W[i, o] (Conv1D, W [in, out]), + b. */
function lin(x: Float64Array, t: TensorData, conv1d: boolean, b?: TensorData): Float64Array {
  const W = f64(t);
  const [r, c] = t.shape as [number, number];
  const nout = conv1d ? c : r, nin = conv1d ? r : c;
  const y = new Float64Array(nout);
  for (let o = 0; o < nout; o++) {
    let s = b ? toFloat32(b)[o]! : 0;
    for (let i = 0; i < nin; i++) s += x[i]! * (conv1d ? W[i * c + o]! : W[o * c + i]!);
    y[o] = s;
  }
  return y;
}
function rms(x: Float64Array, w: TensorData, eps: number): Float64Array {
  const g = f64(w);
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
  return x.map((v, i) => (v / Math.sqrt(ms + eps)) * g[i]!);
}
function layerNorm(x: Float64Array, w: TensorData, b: TensorData, eps: number): Float64Array {
  const g = f64(w), bb = f64(b);
  const mean = x.reduce((a, v) => a + v, 0) / x.length;
  const v = x.reduce((a, u) => a + (u - mean) ** 2, 0) / x.length;
  return x.map((u, i) => ((u - mean) / Math.sqrt(v + eps)) * g[i]! + bb[i]!);
}
/** Causal attention of query t over keys 0..t; kv head of query head h is floor(h / (H / Hkv)). */
function attend(qs: Float64Array[], ks: Float64Array[], vs: Float64Array[], t: number, H: number, Hkv: number, hd: number): Float64Array {
  const out = new Float64Array(H * hd);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / Hkv));
    const sc = [];
    for (let s = 0; s <= t; s++) {
      let d = 0;
      for (let i = 0; i < hd; i++) d += qs[t]![h * hd + i]! * ks[s]![g * hd + i]!;
      sc.push(d / Math.sqrt(hd));
    }
    const m = Math.max(...sc), e = sc.map((v) => Math.exp(v - m)), z = e.reduce((a, v) => a + v, 0);
    for (let s = 0; s <= t; s++) for (let i = 0; i < hd; i++) out[h * hd + i]! += (e[s]! / z) * vs[s]![g * hd + i]!;
  }
  return out;
}
/** HF's rotate_half RoPE on each head of x at position pos. */
function rope(x: Float64Array, heads: number, hd: number, pos: number, theta: number): Float64Array {
  const y = new Float64Array(x.length), half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const a = pos * theta ** ((-2 * i) / hd), x1 = x[h * hd + i]!, x2 = x[h * hd + half + i]!;
      y[h * hd + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
      y[h * hd + half + i] = x2 * Math.cos(a) + x1 * Math.sin(a);
    }
  }
  return y;
}
const add = (a: Float64Array, b: Float64Array) => a.map((v, i) => v + b[i]!);
function rows(t: TensorData, ids: number[]): Float64Array[] {
  const d = t.shape[1]!, W = f64(t);
  return ids.map((id) => W.slice(id * d, (id + 1) * d));
}

/** LlamaForCausalLM forward, as modeling_llama.py computes it, straight from the HF tensors. */
function llamaReference(T: Tensors, cfg: Record<string, any>, ids: number[]): Float64Array[] {
  const H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads, hd = cfg.hidden_size / H, eps = cfg.rms_norm_eps;
  let xs = rows(T['model.embed_tokens.weight']!, ids);
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const hs = xs.map((x) => rms(x, T[p + 'input_layernorm.weight']!, eps));
    const qs = hs.map((h, t) => rope(lin(h, T[p + 'self_attn.q_proj.weight']!, false), H, hd, t, cfg.rope_theta));
    const ks = hs.map((h, t) => rope(lin(h, T[p + 'self_attn.k_proj.weight']!, false), Hkv, hd, t, cfg.rope_theta));
    const vs = hs.map((h) => lin(h, T[p + 'self_attn.v_proj.weight']!, false));
    xs = xs.map((x, t) => add(x, lin(attend(qs, ks, vs, t, H, Hkv, hd), T[p + 'self_attn.o_proj.weight']!, false)));
    xs = xs.map((x) => {
      const h = rms(x, T[p + 'post_attention_layernorm.weight']!, eps);
      const g = lin(h, T[p + 'mlp.gate_proj.weight']!, false), u = lin(h, T[p + 'mlp.up_proj.weight']!, false);
      return add(x, lin(g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]!), T[p + 'mlp.down_proj.weight']!, false));
    });
  }
  const head = cfg.tie_word_embeddings ? T['model.embed_tokens.weight']! : T['lm_head.weight']!;
  return xs.map((x) => lin(rms(x, T['model.norm.weight']!, eps), head, false));
}

/** GPT2LMHeadModel forward (Conv1D weights, fused c_attn, gelu_new), from tensors named as OpenAI's files. */
function gpt2Reference(T: Tensors, cfg: Record<string, any>, ids: number[]): Float64Array[] {
  const H = cfg.n_head, d = cfg.n_embd, hd = d / H, eps = cfg.layer_norm_epsilon;
  const wpe = rows(T['wpe.weight']!, ids.map((_, t) => t));
  let xs = rows(T['wte.weight']!, ids).map((x, t) => add(x, wpe[t]!));
  const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
  for (let l = 0; l < cfg.n_layer; l++) {
    const p = `h.${l}.`;
    const qkv = xs.map((x) => lin(layerNorm(x, T[p + 'ln_1.weight']!, T[p + 'ln_1.bias']!, eps), T[p + 'attn.c_attn.weight']!, true, T[p + 'attn.c_attn.bias']));
    const qs = qkv.map((v) => v.slice(0, d)), ks = qkv.map((v) => v.slice(d, 2 * d)), vs = qkv.map((v) => v.slice(2 * d));
    xs = xs.map((x, t) => add(x, lin(attend(qs, ks, vs, t, H, H, hd), T[p + 'attn.c_proj.weight']!, true, T[p + 'attn.c_proj.bias'])));
    xs = xs.map((x) => {
      const h = layerNorm(x, T[p + 'ln_2.weight']!, T[p + 'ln_2.bias']!, eps);
      return add(x, lin(lin(h, T[p + 'mlp.c_fc.weight']!, true, T[p + 'mlp.c_fc.bias']).map(gelu), T[p + 'mlp.c_proj.weight']!, true, T[p + 'mlp.c_proj.bias']));
    });
  }
  return xs.map((x) => lin(layerNorm(x, T['ln_f.weight']!, T['ln_f.bias']!, eps), T['wte.weight']!, false));
}

// ------------------------------------------------------------------ fixtures written by hand

let seed = 1;
/** Random values stored in `dtype` (F16/BF16 round them: the reference reads the stored values). */
function rand(shape: number[], dtype: 'F32' | 'F16' | 'BF16', scale = 0.3, offset = 0): TensorData {
  const size = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    v[i] = offset + scale * ((seed / 2 ** 32) * 2 - 1);
  }
  return fromFloat32(v, shape, dtype);
}

const LLAMA_CFG = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 512, hidden_size: 16, intermediate_size: 24,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, hidden_act: 'silu', max_position_embeddings: 64,
  rms_norm_eps: 1e-6, rope_theta: 10000, rope_scaling: null, attention_bias: false, mlp_bias: false, tie_word_embeddings: false,
  bos_token_id: 1, eos_token_id: 2, torch_dtype: 'bfloat16',
};

/** A LlamaForCausalLM directory with a two-shard index; norms F32, embeddings F16, everything else BF16. */
function writeLlamaDir(dir: string, cfg: Record<string, any> = LLAMA_CFG): Tensors {
  mkdirSync(dir, { recursive: true });
  const d = cfg.hidden_size, kv = (cfg.num_key_value_heads * d) / cfg.num_attention_heads, ff = cfg.intermediate_size;
  const shard1: Tensors = { 'model.embed_tokens.weight': rand([cfg.vocab_size, d], 'F16', 1) };
  const shard2: Tensors = { 'model.norm.weight': rand([d], 'F32', 0.2, 1), 'lm_head.weight': rand([cfg.vocab_size, d], 'BF16', 0.5) };
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`, s = l === 0 ? shard1 : shard2;
    s[p + 'input_layernorm.weight'] = rand([d], 'F32', 0.2, 1);
    s[p + 'post_attention_layernorm.weight'] = rand([d], 'F32', 0.2, 1);
    s[p + 'self_attn.q_proj.weight'] = rand([d, d], 'BF16');
    s[p + 'self_attn.k_proj.weight'] = rand([kv, d], 'BF16');
    s[p + 'self_attn.v_proj.weight'] = rand([kv, d], 'BF16');
    s[p + 'self_attn.o_proj.weight'] = rand([d, d], 'BF16');
    s[p + 'mlp.gate_proj.weight'] = rand([ff, d], 'BF16');
    s[p + 'mlp.up_proj.weight'] = rand([ff, d], 'BF16');
    s[p + 'mlp.down_proj.weight'] = rand([d, ff], 'BF16');
  }
  const files = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  writeSafetensors(join(dir, files[0]!), shard1, { format: 'pt' });
  writeSafetensors(join(dir, files[1]!), shard2, { format: 'pt' });
  const weight_map = Object.fromEntries([...Object.keys(shard1).map((k) => [k, files[0]]), ...Object.keys(shard2).map((k) => [k, files[1]])]);
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map }));
  writeFileSync(join(dir, CONFIG_FILE), JSON.stringify(cfg));
  // The llama2.c vocabulary as HF writes a Llama tokenizer ('▁' pieces, BOS post-processor).
  Tokenizer.fromLlama2c(readFileSync(TOK512_PATH), 512).save(dir);
  return { ...shard1, ...shard2 };
}

const GPT2_CFG = {
  architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', vocab_size: 264, n_positions: 32, n_ctx: 32, n_embd: 16, n_layer: 2,
  n_head: 2, n_inner: null, activation_function: 'gelu_new', layer_norm_epsilon: 1e-5, bos_token_id: 256, eos_token_id: 256,
};

/** A GPT2LMHeadModel directory as OpenAI's gpt2 files are (no `transformer.` prefix, attn.bias buffers), F16. */
function writeGpt2Dir(dir: string): Tensors {
  mkdirSync(dir, { recursive: true });
  const d = 16, c = GPT2_CFG;
  const T: Tensors = { 'wte.weight': rand([c.vocab_size, d], 'F16', 1), 'wpe.weight': rand([c.n_positions, d], 'F16', 0.5), 'ln_f.weight': rand([d], 'F16', 0.2, 1), 'ln_f.bias': rand([d], 'F16', 0.1) };
  for (let l = 0; l < c.n_layer; l++) {
    const p = `h.${l}.`;
    for (const ln of ['ln_1', 'ln_2']) {
      T[p + ln + '.weight'] = rand([d], 'F16', 0.2, 1);
      T[p + ln + '.bias'] = rand([d], 'F16', 0.1);
    }
    T[p + 'attn.c_attn.weight'] = rand([d, 3 * d], 'F16');
    T[p + 'attn.c_attn.bias'] = rand([3 * d], 'F16', 0.1);
    T[p + 'attn.c_proj.weight'] = rand([d, d], 'F16');
    T[p + 'attn.c_proj.bias'] = rand([d], 'F16', 0.1);
    T[p + 'mlp.c_fc.weight'] = rand([d, 4 * d], 'F16');
    T[p + 'mlp.c_fc.bias'] = rand([4 * d], 'F16', 0.1);
    T[p + 'mlp.c_proj.weight'] = rand([4 * d, d], 'F16');
    T[p + 'mlp.c_proj.bias'] = rand([d], 'F16', 0.1);
  }
  const mask: Tensors = { 'h.0.attn.bias': rand([1, 1, 32, 32], 'F16') }; // the old causal-mask buffer: not a weight
  writeSafetensors(join(dir, 'model.safetensors'), { ...T, ...mask }, { format: 'pt' });
  writeFileSync(join(dir, CONFIG_FILE), JSON.stringify(c));
  Tokenizer.train(['to be or not to be, that is the question'], { vocabSize: 259, specialTokens: ['<|endoftext|>'] }).save(dir);
  return T;
}

const IDS = [1, 403, 407, 261, 378, 17, 300, 9, 0, 255];

function ourLogits(p: Params, c: ModelConfig, ids: number[]): Float32Array {
  const input = tf.tensor2d([ids], undefined, 'int32');
  const { logits } = forward(p, c, input);
  const out = Float32Array.from(logits.dataSync());
  input.dispose();
  logits.dispose();
  return out;
}

function maxDiff(ref: Float64Array[], ours: Float32Array): number {
  const V = ref[0]!.length;
  let m = 0;
  ref.forEach((row, t) => row.forEach((v, i) => (m = Math.max(m, Math.abs(v - ours[t * V + i]!)))));
  return m;
}

describe('hand-written Hugging Face directories import with the reference logits', () => {
  test('LlamaForCausalLM: GQA, untied, BF16 + F16 + F32 tensors, two shards', () => {
    const dir = fresh('llama');
    const T = writeLlamaDir(dir);
    const m = importHf(dir);
    assert.deepEqual(m.config, resolveModelConfig({ arch: 'llama', vocab_size: 512, n_ctx: 64, n_layer: 2, n_embd: 16, n_head: 4, n_kv_head: 2, n_inner: 24, norm_eps: 1e-6, rope_theta: 10000, tie_embeddings: false, bias: false, dropout: 0 }));
    assert.equal(m.tokenizer.addBos, true);
    const ref = llamaReference(T, LLAMA_CFG, IDS);
    const diff = maxDiff(ref, ourLogits(m.params, m.config, IDS));
    const scale = Math.max(...ref.flatMap((r) => Array.from(r, Math.abs)));
    assert.ok(diff < 1e-4 * Math.max(1, scale), `max |Δlogit| ${diff} (logits up to ${scale})`);
    assert.ok(scale > 1, 'logits are not trivially small');
    disposeParams(m.params);
  });

  test('tied Llama (no lm_head in the file) and a Qwen2-style config with q/k/v biases', () => {
    const dir = fresh('llama-tied');
    const cfg = { ...LLAMA_CFG, tie_word_embeddings: true };
    const T = writeLlamaDir(dir, cfg);
    // Drop lm_head from its shard and from the index.
    const idx = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    delete idx.weight_map['lm_head.weight'];
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(idx));
    const shard2 = Object.fromEntries(Object.entries(T).filter(([k]) => idx.weight_map[k] === 'model-00002-of-00002.safetensors'));
    writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), shard2);
    const m = importHf(dir);
    assert.equal(m.config.tie_embeddings, true);
    assert.ok(maxDiff(llamaReference(T, cfg, IDS), ourLogits(m.params, m.config, IDS)) < 1e-4);
    disposeParams(m.params);

    // Qwen2: biases on q, k, v only (the reference adds them by hand).
    const q = fresh('qwen2');
    const qcfg = { ...LLAMA_CFG, model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'], sliding_window: 32, use_sliding_window: false };
    const QT = writeLlamaDir(q, qcfg);
    const biases: Tensors = {};
    for (let l = 0; l < 2; l++) for (const [p, w] of [['q', 16], ['k', 8], ['v', 8]] as const) biases[`model.layers.${l}.self_attn.${p}_proj.bias`] = rand([w], 'F32', 0.5);
    writeSafetensors(join(q, 'model-00003-of-00003.safetensors'), biases);
    const qidx = JSON.parse(readFileSync(join(q, 'model.safetensors.index.json'), 'utf8'));
    for (const k of Object.keys(biases)) qidx.weight_map[k] = 'model-00003-of-00003.safetensors';
    writeFileSync(join(q, 'model.safetensors.index.json'), JSON.stringify(qidx));
    const qm = importHf(q);
    assert.equal(qm.config.bias, true);
    // Reference with biases: fold each bias into the weights' result by a wrapper over lin().
    const withBias: Tensors = { ...QT };
    const ref = ((): Float64Array[] => {
      // q/k/v biases: a Linear with bias = the reference's lin with b; patch by extending the reference inline.
      const H = 4, Hkv = 2, hd = 4;
      let xs = rows(withBias['model.embed_tokens.weight']!, IDS);
      for (let l = 0; l < 2; l++) {
        const p = `model.layers.${l}.`;
        const hs = xs.map((x) => rms(x, withBias[p + 'input_layernorm.weight']!, 1e-6));
        const qs = hs.map((h, t) => rope(lin(h, withBias[p + 'self_attn.q_proj.weight']!, false, biases[p + 'self_attn.q_proj.bias']), H, hd, t, 10000));
        const ks = hs.map((h, t) => rope(lin(h, withBias[p + 'self_attn.k_proj.weight']!, false, biases[p + 'self_attn.k_proj.bias']), Hkv, hd, t, 10000));
        const vs = hs.map((h) => lin(h, withBias[p + 'self_attn.v_proj.weight']!, false, biases[p + 'self_attn.v_proj.bias']));
        xs = xs.map((x, t) => add(x, lin(attend(qs, ks, vs, t, H, Hkv, hd), withBias[p + 'self_attn.o_proj.weight']!, false)));
        xs = xs.map((x) => {
          const h = rms(x, withBias[p + 'post_attention_layernorm.weight']!, 1e-6);
          const g = lin(h, withBias[p + 'mlp.gate_proj.weight']!, false), u = lin(h, withBias[p + 'mlp.up_proj.weight']!, false);
          return add(x, lin(g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]!), withBias[p + 'mlp.down_proj.weight']!, false));
        });
      }
      return xs.map((x) => lin(rms(x, withBias['model.norm.weight']!, 1e-6), withBias['lm_head.weight']!, false));
    })();
    assert.ok(maxDiff(ref, ourLogits(qm.params, qm.config, IDS)) < 1e-4);
    disposeParams(qm.params);
  });

  test("GPT2LMHeadModel: Conv1D [in, out], fused c_attn, F16, OpenAI's unprefixed names, padded vocab", () => {
    const dir = fresh('gpt2');
    const T = writeGpt2Dir(dir);
    const m = importHf(dir);
    assert.deepEqual(m.config, resolveModelConfig({ arch: 'gpt2', vocab_size: 264, n_ctx: 32, n_layer: 2, n_embd: 16, n_head: 2, n_inner: 64, norm_eps: 1e-5, tie_embeddings: true, bias: true, dropout: 0 }));
    const ids = IDS.map((i) => i % 259);
    const ref = gpt2Reference(T, GPT2_CFG, ids);
    const diff = maxDiff(ref, ourLogits(m.params, m.config, ids));
    assert.ok(diff < 1e-4, `max |Δlogit| ${diff}`);
    disposeParams(m.params);
  });
});

describe('export → import round trips', () => {
  const base = { vocab_size: 262, n_ctx: 16, n_layer: 2, n_embd: 16 };
  const tok = Tokenizer.train(['to be or not to be, that is the question'], { vocabSize: 262 });
  for (const [label, c] of [
    ['llama tied', resolveModelConfig({ ...base, arch: 'llama', n_head: 4, n_inner: 24 })],
    ['llama untied GQA', resolveModelConfig({ ...base, arch: 'llama', n_head: 4, n_kv_head: 1, n_inner: 24, tie_embeddings: false })],
    ['gpt2 tied', resolveModelConfig({ ...base, arch: 'gpt2', n_head: 2 })],
    ['gpt2 untied', resolveModelConfig({ ...base, arch: 'gpt2', n_head: 2, tie_embeddings: false })],
  ] as const) {
    test(`${label}: only the files transformers reads (project fields removed) → identical logits`, async () => {
      const dir = fresh('export');
      const params = initParams(c, 3);
      await saveCheckpoint(dir, { config: c, params, tokenizer: tok, stage: 'test', stageConfig: {} });
      const raw = JSON.parse(readFileSync(join(dir, CONFIG_FILE), 'utf8'));
      for (const k of ['arch', 'n_kv_head', 'norm_eps', 'tie_embeddings', 'bias', 'dropout', 'llmctl']) delete raw[k];
      if (c.arch === 'llama') for (const k of ['n_ctx', 'n_layer', 'n_embd', 'n_head', 'n_inner']) delete raw[k];
      writeFileSync(join(dir, CONFIG_FILE), JSON.stringify(raw));
      rmSync(join(dir, 'manifest.json'));
      const m = importHf(dir);
      assert.deepEqual(m.config, c);
      const out = fresh('reimported');
      await saveCheckpoint(out, { config: m.config, params: m.params, tokenizer: m.tokenizer, stage: 'import', stageConfig: {} });
      const back = loadCheckpoint(out);
      const ids = [5, 100, 261, 7, 42, 0, 255, 9];
      assert.deepEqual(ourLogits(back.params, back.config, ids), ourLogits(params, c, ids));
      assert.deepEqual(back.tokenizer.encode('to be or not'), tok.encode('to be or not'));
      for (const p of [params, m.params, back.params]) disposeParams(p);
    });
  }
});

describe('llmctl import --format hf (CLI)', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'import', '--format', 'hf', ...args], { cwd: REPO, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });

  test('imports a directory; an unsupported option is one line naming the file and field, exit 2', () => {
    const dir = fresh('cli-llama');
    writeLlamaDir(dir);
    const out = fresh('cli-out');
    const ok = run('--model', dir, '--out', out, '--json');
    assert.equal(ok.status, 0, ok.stderr.slice(-2000));
    assert.equal(JSON.parse(ok.stdout.trim().split('\n').at(-1)!).arch, 'llama');
    const ck = loadCheckpoint(out);
    assert.equal(ck.manifest?.stage, 'import');
    const cfg = JSON.parse(readFileSync(join(out, CONFIG_FILE), 'utf8'));
    assert.deepEqual([cfg.bos_token_id, cfg.eos_token_id, cfg.model_type], [1, 2, 'llama']);
    disposeParams(ck.params);

    const bad = fresh('cli-bad');
    writeLlamaDir(bad, { ...LLAMA_CFG, rope_scaling: { rope_type: 'llama3', factor: 8 } });
    const r = run('--model', bad, '--out', fresh('cli-out'));
    assert.equal(r.status, 2);
    const lines = r.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('{'));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^llmctl import: .*config\.json: rope_scaling: .* is not supported/);
  });
});
