/**
 * The shared decoder-only transformer, in the spirit of nanoGPT's model.py: one functional forward pass
 * over a flat map of named parameters. Two families share it:
 *   gpt2  — LayerNorm, GELU MLP, learned positions (wpe), biases.
 *   llama — RMSNorm, SwiGLU MLP, rotary positions (RoPE), grouped-query attention, no biases.
 * Linear weights are kept in memory as [in, out] so x @ W needs no transpose (see kernels.ts); the
 * checkpoint writer stores them as [out, in] like torch.nn.Linear.
 * LoRA adapters and frozen reference models are just other entries / other maps: `linear` adds
 * `<name>.lora_A/B` when present, so no layer needs to know about fine-tuning.
 */
import * as tf from '@tensorflow/tfjs-core';
import { dequantizeLinear } from '../quant/tensors.js';
import { bmm, embedding, fastDropout, linear as linearKernel, loraDelta, matmul, matmulFrozen } from './kernels.js';

export interface ModelConfig {
  arch: 'gpt2' | 'llama';
  vocab_size: number;
  n_ctx: number;
  n_layer: number;
  n_embd: number;
  n_head: number;
  n_kv_head: number;
  n_inner: number;
  norm_eps: number;
  rope_theta: number;
  tie_embeddings: boolean;
  bias: boolean;
  dropout: number;
}

export type Params = Record<string, tf.Tensor>;

/** Fill the optional fields of a model config with each family's defaults. */
export function resolveModelConfig(c: Partial<ModelConfig> & Pick<ModelConfig, 'vocab_size' | 'n_ctx' | 'n_layer' | 'n_embd' | 'n_head'>): ModelConfig {
  const arch = c.arch ?? 'gpt2';
  const llamaInner = () => 256 * Math.ceil(((2 * 4 * c.n_embd) / 3) / 256); // Llama's multiple_of rule
  return {
    arch,
    vocab_size: c.vocab_size,
    n_ctx: c.n_ctx,
    n_layer: c.n_layer,
    n_embd: c.n_embd,
    n_head: c.n_head,
    n_kv_head: c.n_kv_head ?? c.n_head,
    n_inner: c.n_inner ?? (arch === 'gpt2' ? 4 * c.n_embd : llamaInner()),
    norm_eps: c.norm_eps ?? 1e-5,
    rope_theta: c.rope_theta ?? 10000,
    tie_embeddings: c.tie_embeddings ?? true,
    bias: c.bias ?? arch === 'gpt2',
    dropout: c.dropout ?? 0,
  };
}

/** Every parameter's name and shape. Names follow the papers / nanoGPT (wte, wpe, h.i.attn, mlp, ln_f). */
export function paramShapes(c: ModelConfig): Record<string, number[]> {
  const d = c.n_embd, hd = d / c.n_head, kv = c.n_kv_head * hd;
  const s: Record<string, number[]> = { 'wte.weight': [c.vocab_size, d] };
  if (c.arch === 'gpt2') s['wpe.weight'] = [c.n_ctx, d];
  const norm = (name: string) => {
    s[`${name}.weight`] = [d];
    if (c.arch === 'gpt2') s[`${name}.bias`] = [d];
  };
  const lin = (name: string, nin: number, nout: number) => {
    s[`${name}.weight`] = [nin, nout];
    if (c.bias) s[`${name}.bias`] = [nout];
  };
  for (let i = 0; i < c.n_layer; i++) {
    const p = `h.${i}`;
    norm(`${p}.ln_1`);
    lin(`${p}.attn.q_proj`, d, d);
    lin(`${p}.attn.k_proj`, d, kv);
    lin(`${p}.attn.v_proj`, d, kv);
    lin(`${p}.attn.o_proj`, d, d);
    norm(`${p}.ln_2`);
    if (c.arch === 'llama') lin(`${p}.mlp.gate_proj`, d, c.n_inner);
    lin(`${p}.mlp.up_proj`, d, c.n_inner);
    lin(`${p}.mlp.down_proj`, c.n_inner, d);
  }
  norm('ln_f');
  if (!c.tie_embeddings) s['lm_head.weight'] = [d, c.vocab_size];
  return s;
}

export function countParams(c: ModelConfig): number {
  return Object.values(paramShapes(c)).reduce((n, shape) => n + shape.reduce((a, b) => a * b, 1), 0);
}

/** Linear weights are stored transposed ([out, in]) in checkpoints, like torch.nn.Linear. */
export function isLinearWeight(name: string): boolean {
  return /(_proj|lm_head)\.weight$/.test(name);
}

// ---------------------------------------------------------------- layers

export interface ForwardOptions {
  /** Key/value cache for incremental decoding; updated in place (old tensors disposed). */
  cache?: KVCache;
  /** Apply dropout (training only, when config.dropout > 0). */
  training?: boolean;
  /** Also return the final hidden states [B,T,d] (value and reward heads read them). */
  returnHidden?: boolean;
  /** LoRA scale alpha/r applied to `<name>.lora_A/B` entries found in the param map. */
  loraScale?: number;
  /** Dropout on the LoRA branch input (training only). */
  loraDropout?: number;
  /**
   * The base weights (everything but lora_A/B) get no gradient, e.g. LoRA training: their matmuls skip
   * computing dW (LoRA's speed-up over full fine-tuning depends on it). Forward values are unchanged.
   */
  freezeBase?: boolean;
  /** Called with the input of every linear layer (quantization calibration reads them). */
  onLinearInput?: (module: string, x: tf.Tensor2D) => void;
}

export interface KVCache {
  k: (tf.Tensor4D | null)[]; // per layer [B, n_kv_head, S, hd]
  v: (tf.Tensor4D | null)[];
  length: number; // positions already cached
}

export function emptyCache(c: ModelConfig): KVCache {
  return { k: Array(c.n_layer).fill(null), v: Array(c.n_layer).fill(null), length: 0 };
}

export function disposeCache(cache: KVCache): void {
  for (const t of [...cache.k, ...cache.v]) t?.dispose();
  cache.k.fill(null);
  cache.v.fill(null);
  cache.length = 0;
}

/** x [N, in] @ W [in, out] + b, plus the LoRA update (x @ A) @ B * scale when the adapter is present. */
function linear(p: Params, name: string, x: tf.Tensor2D, opts: ForwardOptions): tf.Tensor2D {
  opts.onLinearInput?.(name, x);
  // A quantized module holds packed integers instead of `.weight`: dequantized here, freed with this forward's tidy.
  const w = (p[`${name}.weight`] ?? dequantizeLinear(p, name, x.shape[1])) as tf.Tensor2D, b = p[`${name}.bias`] as tf.Tensor1D | undefined;
  let y: tf.Tensor2D;
  if (opts.freezeBase) y = b ? (tf.add(matmulFrozen(x, w), b) as tf.Tensor2D) : matmulFrozen(x, w); // no dW, no db
  else y = b ? linearKernel(x, w, b) : matmul(x, w);
  const A = p[`${name}.lora_A`], B = p[`${name}.lora_B`];
  if (A && B) {
    const xa = opts.training && opts.loraDropout ? fastDropout(x, opts.loraDropout) : x;
    y = tf.add(y, loraDelta(xa, A as tf.Tensor2D, B as tf.Tensor2D, opts.loraScale ?? 1));
  }
  return y;
}

function norm(p: Params, name: string, x: tf.Tensor2D, c: ModelConfig): tf.Tensor2D {
  if (c.arch === 'llama') {
    // RMSNorm: x / sqrt(mean(x²) + eps) * w
    const ms = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, c.norm_eps))), p[`${name}.weight`]!);
  }
  const { mean, variance } = tf.moments(x, -1, true);
  const xhat = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, c.norm_eps)));
  return tf.add(tf.mul(xhat, p[`${name}.weight`]!), p[`${name}.bias`]!);
}

/**
 * GPT-2's tanh approximation of GELU, 0.5·x·(1 + tanh(z)), written as x·sigmoid(2z) (the same function):
 * on WASM tanh and pow are ~3x slower than sigmoid and multiplies.
 */
function gelu(x: tf.Tensor): tf.Tensor {
  const z2 = tf.mul(2 * Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.mul(tf.mul(x, x), x))));
  return tf.mul(x, tf.sigmoid(z2));
}

function mlp(p: Params, name: string, x: tf.Tensor2D, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  const up = linear(p, `${name}.up_proj`, x, o);
  let act: tf.Tensor;
  if (c.arch === 'llama') {
    const gate = linear(p, `${name}.gate_proj`, x, o);
    act = tf.mul(tf.mul(gate, tf.sigmoid(gate)), up); // SwiGLU: silu(gate) * up
  } else {
    act = gelu(up);
  }
  return linear(p, `${name}.down_proj`, act as tf.Tensor2D, o);
}

/** Rotary embedding, "rotate half" layout (as Hugging Face Llama): x [B,H,T,hd], positions pos0.. */
function rope(x: tf.Tensor4D, pos0: number, c: ModelConfig): tf.Tensor4D {
  const [, , T, hd] = x.shape;
  const half = hd / 2;
  const cos = new Float32Array(T * half), sin = new Float32Array(T * half);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = (pos0 + t) * Math.pow(c.rope_theta, (-2 * i) / hd);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  const cosT = tf.tensor2d(cos, [T, half]), sinT = tf.tensor2d(sin, [T, half]);
  const [x1, x2] = tf.split(x, 2, -1) as [tf.Tensor4D, tf.Tensor4D];
  return tf.concat([tf.sub(tf.mul(x1, cosT), tf.mul(x2, sinT)), tf.add(tf.mul(x2, cosT), tf.mul(x1, sinT))], -1) as tf.Tensor4D;
}

/** Additive causal mask [T, S] for queries at positions pos0..pos0+T-1 over keys 0..S-1. */
function causalMask(T: number, S: number, pos0: number): tf.Tensor2D {
  const m = new Float32Array(T * S);
  for (let t = 0; t < T; t++) for (let s = pos0 + t + 1; s < S; s++) m[t * S + s] = -1e9;
  return tf.tensor2d(m, [T, S]);
}

function attn(p: Params, name: string, x: tf.Tensor2D, B: number, T: number, layer: number, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  const hd = c.n_embd / c.n_head, rep = c.n_head / c.n_kv_head;
  const pos0 = o.cache?.length ?? 0;
  const heads = (t: tf.Tensor2D, n: number) => tf.transpose(tf.reshape(t, [B, T, n, hd]), [0, 2, 1, 3]) as tf.Tensor4D;
  let q = heads(linear(p, `${name}.q_proj`, x, o), c.n_head);
  let k = heads(linear(p, `${name}.k_proj`, x, o), c.n_kv_head);
  let v = heads(linear(p, `${name}.v_proj`, x, o), c.n_kv_head);
  if (c.arch === 'llama') {
    q = rope(q, pos0, c);
    k = rope(k, pos0, c);
  }
  if (o.cache) {
    const pk = o.cache.k[layer], pv = o.cache.v[layer];
    if (pk && pv) {
      k = tf.concat([pk, k], 2);
      v = tf.concat([pv, v], 2);
    }
    // The cache outlives this tidy scope: keep the new tensors, drop the old ones.
    o.cache.k[layer] = tf.keep(k);
    o.cache.v[layer] = tf.keep(v);
    pk?.dispose();
    pv?.dispose();
  }
  const S = k.shape[2];
  if (rep > 1) {
    // Grouped-query attention: query head h reads kv head floor(h / rep).
    const expand = (t: tf.Tensor4D) => tf.reshape(tf.tile(tf.reshape(t, [B * c.n_kv_head, 1, S, hd]), [1, rep, 1, 1]), [B, c.n_head, S, hd]);
    k = expand(k) as tf.Tensor4D;
    v = expand(v) as tf.Tensor4D;
  }
  const q3 = tf.reshape(q, [B * c.n_head, T, hd]) as tf.Tensor3D;
  const kT = tf.transpose(tf.reshape(k, [B * c.n_head, S, hd]), [0, 2, 1]) as tf.Tensor3D;
  const v3 = tf.reshape(v, [B * c.n_head, S, hd]) as tf.Tensor3D;
  const scores = tf.add(tf.mul(bmm(q3, kT), 1 / Math.sqrt(hd)), causalMask(T, S, pos0));
  let att = tf.softmax(scores) as tf.Tensor3D;
  if (o.training && c.dropout > 0) att = tf.dropout(att, c.dropout) as tf.Tensor3D;
  const y = tf.transpose(tf.reshape(bmm(att, v3), [B, c.n_head, T, hd]), [0, 2, 1, 3]);
  return linear(p, `${name}.o_proj`, tf.reshape(y, [B * T, c.n_embd]) as tf.Tensor2D, o);
}

function dropout(x: tf.Tensor2D, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  return o.training && c.dropout > 0 ? (tf.dropout(x, c.dropout) as tf.Tensor2D) : x;
}

/**
 * tokens [B, T] int32 → logits [B, T, vocab]. With a cache, positions continue from cache.length and
 * the cache grows by T.
 */
export function forward(p: Params, c: ModelConfig, tokens: tf.Tensor2D, o: ForwardOptions = {}): { logits: tf.Tensor3D; hidden?: tf.Tensor3D } {
  const [B, T] = tokens.shape;
  const pos0 = o.cache?.length ?? 0;
  if (pos0 + T > c.n_ctx) throw new Error(`sequence of ${pos0 + T} tokens exceeds the context length ${c.n_ctx}`);
  const out = tf.tidy(() => {
    let x = embedding(p['wte.weight'] as tf.Tensor2D, tf.reshape(tokens, [B * T]) as tf.Tensor1D);
    if (c.arch === 'gpt2') {
      const wpe = tf.slice(p['wpe.weight']!, [pos0, 0], [T, c.n_embd]);
      x = tf.reshape(tf.add(tf.reshape(x, [B, T, c.n_embd]), wpe), [B * T, c.n_embd]);
    }
    x = dropout(x, c, o);
    for (let i = 0; i < c.n_layer; i++) {
      x = tf.add(x, dropout(attn(p, `h.${i}.attn`, norm(p, `h.${i}.ln_1`, x, c), B, T, i, c, o), c, o));
      x = tf.add(x, dropout(mlp(p, `h.${i}.mlp`, norm(p, `h.${i}.ln_2`, x, c), c, o), c, o));
    }
    const h = norm(p, 'ln_f', x, c);
    const head = c.tie_embeddings ? (tf.transpose(p['wte.weight']!) as tf.Tensor2D) : (p['lm_head.weight'] as tf.Tensor2D);
    const logits = tf.reshape(o.freezeBase ? matmulFrozen(h, head) : matmul(h, head), [B, T, c.vocab_size]) as tf.Tensor3D;
    return o.returnHidden ? { logits, hidden: tf.reshape(h, [B, T, c.n_embd]) as tf.Tensor3D } : { logits };
  });
  if (o.cache) o.cache.length += T;
  return out;
}
