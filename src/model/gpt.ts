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
import { writeRows } from '../backend/native.js';
import * as fused from './kernels.js';
import { bmm, embedding, fastDropout, linear as linearKernel, loraDelta, matmul, matmulFrozen, nativeOps, oneHotFloat } from './kernels.js';

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

/**
 * Attention over a paged KV cache (src/serve/). The N tokens of a serving step (prompt chunks and decode
 * tokens of many sequences) run as one flat batch [1, N]; each token carries its own position, and
 * `attend` stores the new keys/values in the block pool and lets each token attend to its own sequence only.
 */
export interface PagedAttention {
  /** Position of each of the N tokens within its own sequence (RoPE angle, wpe row). */
  positions: Int32Array;
  /** Where the keys/values live, for the native kernels (src/serve/paged-attention.ts builds them). */
  tables: PagedTables;
  /** q [1, n_head, N, hd], k/v [1, n_kv_head, N, hd] (RoPE applied) → attention output [N, n_embd]. */
  attend(layer: number, q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor2D;
}

/**
 * Per-layer block pools k[layer], v[layer] of rows [n_kv_head][head_dim]; token i's sequence keeps position p
 * in pool row slots[base[i] + p] (p = 0..positions[i]; the token's own k/v go to p = positions[i]).
 */
export interface PagedTables {
  k: Float32Array[];
  v: Float32Array[];
  base: Int32Array;
  slots: Int32Array;
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
  /**
   * Batched prompts of different lengths, left-padded: row b's first leftPad[b] slots are padding. They
   * are masked out of attention and the row's positions start at 0 after them (Hugging Face's
   * attention_mask + position_ids), so each row computes what it would alone.
   */
  leftPad?: number[];
  /** Paged KV cache (serve): the tokens are one flat row [1, N] of several sequences; see PagedAttention. */
  paged?: PagedAttention;
  /** Called with the input of every linear layer (quantization calibration reads them). */
  onLinearInput?: (module: string, x: tf.Tensor2D) => void;
}

export interface KVCache {
  k: (tf.Tensor4D | null)[]; // per layer [B, n_kv_head, S, hd]; preallocated: [B, n_ctx, n_kv_head, hd]
  v: (tf.Tensor4D | null)[];
  length: number; // positions already cached
  /**
   * Set when the native kernels filled this cache: each layer's k/v is allocated once for the whole
   * context and new positions are written in place (no concatenation per token).
   */
  preallocated?: boolean;
}

export function emptyCache(c: ModelConfig): KVCache {
  return { k: Array(c.n_layer).fill(null), v: Array(c.n_layer).fill(null), length: 0 };
}

export function disposeCache(cache: KVCache): void {
  for (const t of [...cache.k, ...cache.v]) t?.dispose();
  cache.k.fill(null);
  cache.v.fill(null);
  cache.length = 0;
  cache.preallocated = undefined;
}

/**
 * Row `b` of a batch cache, its first `length` positions, copied into `n` rows (e.g. one per answer choice
 * continuing a shared context). Contiguous caches are [B, n_kv_head, S, hd]; the native kernels' preallocated ones
 * [B, n_ctx, n_kv_head, hd], whose positions past `length` the next forward overwrites.
 */
export function repeatCacheRow(cache: KVCache, b: number, length: number, n: number): KVCache {
  const pre = Boolean(cache.preallocated);
  const size = (t: tf.Tensor4D): [number, number, number, number] => (pre ? [1, t.shape[1], t.shape[2], t.shape[3]] : [1, t.shape[1], length, t.shape[3]]);
  const pick = (t: tf.Tensor4D | null) => (t ? tf.tidy(() => tf.tile(tf.slice(t, [b, 0, 0, 0], size(t)), [n, 1, 1, 1]) as tf.Tensor4D) : null);
  return { k: cache.k.map(pick), v: cache.v.map(pick), length, ...(pre ? { preallocated: true } : {}) };
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
  if (nativeOps()) {
    // The same math as below, fused into one native kernel each way.
    const w = p[`${name}.weight`]!;
    return c.arch === 'llama' ? fused.rmsNorm(x, w, c.norm_eps) : fused.layerNorm(x, w, p[`${name}.bias`]!, c.norm_eps);
  }
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
  if (nativeOps()) return fused.gelu(x);
  const z2 = tf.mul(2 * Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.mul(tf.mul(x, x), x))));
  return tf.mul(x, tf.sigmoid(z2));
}

function mlp(p: Params, name: string, x: tf.Tensor2D, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  const up = linear(p, `${name}.up_proj`, x, o);
  let act: tf.Tensor;
  if (c.arch === 'llama') {
    const gate = linear(p, `${name}.gate_proj`, x, o);
    act = nativeOps() ? fused.swiglu(gate, up) : tf.mul(tf.mul(gate, tf.sigmoid(gate)), up); // SwiGLU: silu(gate) * up
  } else {
    act = gelu(up);
  }
  return linear(p, `${name}.down_proj`, act as tf.Tensor2D, o);
}

/** Rotary embedding, "rotate half" layout (as Hugging Face Llama): x [B,H,T,hd], positions pos0.. (minus each row's left padding). */
function rope(x: tf.Tensor4D, pos0: number, c: ModelConfig, leftPad?: number[]): tf.Tensor4D {
  const [, , T, hd] = x.shape;
  const half = hd / 2;
  const { cos, sin } = ropeTable(c.n_ctx, hd, c.rope_theta);
  let cosT: tf.Tensor, sinT: tf.Tensor;
  if (!leftPad) {
    cosT = tf.tensor2d(cos.subarray(pos0 * half, (pos0 + T) * half), [T, half]);
    sinT = tf.tensor2d(sin.subarray(pos0 * half, (pos0 + T) * half), [T, half]);
  } else {
    // One table per row: row b's position t is pos0 + t − leftPad[b] (padding slots take position 0).
    const rc = new Float32Array(leftPad.length * T * half), rs = new Float32Array(leftPad.length * T * half);
    leftPad.forEach((pad, b) => {
      for (let t = 0; t < T; t++) {
        const at = Math.max(0, pos0 + t - pad) * half;
        rc.set(cos.subarray(at, at + half), (b * T + t) * half);
        rs.set(sin.subarray(at, at + half), (b * T + t) * half);
      }
    });
    cosT = tf.tensor4d(rc, [leftPad.length, 1, T, half]);
    sinT = tf.tensor4d(rs, [leftPad.length, 1, T, half]);
  }
  const [x1, x2] = tf.split(x, 2, -1) as [tf.Tensor4D, tf.Tensor4D];
  return tf.concat([tf.sub(tf.mul(x1, cosT), tf.mul(x2, sinT)), tf.add(tf.mul(x2, cosT), tf.mul(x1, sinT))], -1) as tf.Tensor4D;
}

/** cos/sin of every position's rotary angles, computed once per (context, head size, theta). */
const ropeTables = new Map<string, { cos: Float32Array; sin: Float32Array }>();
function ropeTable(nCtx: number, hd: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const key = `${nCtx}/${hd}/${theta}`;
  let table = ropeTables.get(key);
  if (!table) {
    const half = hd / 2, cos = new Float32Array(nCtx * half), sin = new Float32Array(nCtx * half);
    for (let t = 0; t < nCtx; t++) {
      for (let i = 0; i < half; i++) {
        const angle = t * Math.pow(theta, (-2 * i) / hd);
        cos[t * half + i] = Math.cos(angle);
        sin[t * half + i] = Math.sin(angle);
      }
    }
    ropeTables.set(key, (table = { cos, sin }));
  }
  return table;
}

/**
 * Additive causal mask [T, S] for queries at positions pos0..pos0+T-1 over keys 0..S-1; with left
 * padding, [B*H, T, S] that also hides row b's first leftPad[b] keys.
 */
function causalMask(T: number, S: number, pos0: number, leftPad?: number[], nHead = 1): tf.Tensor {
  const rows = leftPad ?? [0], heads = leftPad ? nHead : 1;
  const m = new Float32Array(rows.length * heads * T * S);
  rows.forEach((pad, b) => {
    for (let h = 0; h < heads; h++) {
      const o = (b * heads + h) * T * S;
      for (let t = 0; t < T; t++) for (let s = 0; s < S; s++) if (s > pos0 + t || s < pad) m[o + t * S + s] = -1e9;
    }
  });
  return leftPad ? tf.tensor3d(m, [rows.length * nHead, T, S]) : tf.tensor2d(m, [T, S]);
}

function attn(p: Params, name: string, x: tf.Tensor2D, B: number, T: number, layer: number, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  if (o.paged) return pagedAttn(p, name, x, layer, c, o, o.paged);
  const hd = c.n_embd / c.n_head, rep = c.n_head / c.n_kv_head;
  const pos0 = o.cache?.length ?? 0;
  // The fused kernels take no per-row padding: left-padded batches (PPO/GRPO rollouts) use the tfjs path.
  if (nativeOps() && !(o.training && c.dropout > 0) && !o.leftPad) return attnFused(p, name, x, B, T, layer, c, o);
  if (o.cache?.preallocated) throw new Error('this KV cache was filled by the native kernels; switch kernels between generations only');
  const heads = (t: tf.Tensor2D, n: number) => tf.transpose(tf.reshape(t, [B, T, n, hd]), [0, 2, 1, 3]) as tf.Tensor4D;
  let q = heads(linear(p, `${name}.q_proj`, x, o), c.n_head);
  let k = heads(linear(p, `${name}.k_proj`, x, o), c.n_kv_head);
  let v = heads(linear(p, `${name}.v_proj`, x, o), c.n_kv_head);
  if (c.arch === 'llama') {
    q = rope(q, pos0, c, o.leftPad);
    k = rope(k, pos0, c, o.leftPad);
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
  // Grouped-query attention without copying the cache: query head h = g·rep + r reads kv head g, so the
  // rep query heads of a group are stacked as rows of one [rep·T, hd] matrix against that group's keys.
  const G = B * c.n_kv_head;
  const q3 = tf.reshape(q, [G, rep * T, hd]) as tf.Tensor3D;
  const kT = tf.transpose(tf.reshape(k, [G, S, hd]), [0, 2, 1]) as tf.Tensor3D;
  const v3 = tf.reshape(v, [G, S, hd]) as tf.Tensor3D;
  let scores = tf.mul(bmm(q3, kT), 1 / Math.sqrt(hd));
  // One query position sees every cached key: no mask needed while decoding (unless rows are left-padded).
  // A per-row mask [B·H, T, S] lines up with [G, rep, T, S]: head h = g·rep + r of row b is (b·n_kv_head + g)·rep + r.
  if (T > 1 || S > pos0 + T || o.leftPad) {
    const mask = causalMask(T, S, pos0, o.leftPad, c.n_head);
    scores = tf.reshape(tf.add(tf.reshape(scores, [G, rep, T, S]), o.leftPad ? tf.reshape(mask, [G, rep, T, S]) : mask), [G, rep * T, S]);
  }
  let att = tf.softmax(scores) as tf.Tensor3D;
  if (o.training && c.dropout > 0) att = fastDropout(att, c.dropout); // seeded (seedDropout): a resumed run draws the same masks
  const y = tf.transpose(tf.reshape(bmm(att, v3), [B, c.n_head, T, hd]), [0, 2, 1, 3]);
  return linear(p, `${name}.o_proj`, tf.reshape(y, [B * T, c.n_embd]) as tf.Tensor2D, o);
}

/**
 * The same attention on the native kernels: heads stay in the projections' [B, T, heads, hd] layout (no
 * transposes), RoPE and attention are one kernel each, and the KV cache is allocated once per layer for
 * the whole context and written in place.
 */
function attnFused(p: Params, name: string, x: tf.Tensor2D, B: number, T: number, layer: number, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  const hd = c.n_embd / c.n_head;
  const pos0 = o.cache?.length ?? 0;
  const heads = (t: tf.Tensor2D, n: number) => tf.reshape(t, [B, T, n, hd]) as tf.Tensor4D;
  let q = heads(linear(p, `${name}.q_proj`, x, o), c.n_head);
  let k = heads(linear(p, `${name}.k_proj`, x, o), c.n_kv_head);
  let v = heads(linear(p, `${name}.v_proj`, x, o), c.n_kv_head);
  if (c.arch === 'llama') {
    q = fused.rope(q, pos0, c.rope_theta);
    k = fused.rope(k, pos0, c.rope_theta);
  }
  if (o.cache) {
    const [kc, vc] = cacheLayer(o.cache, layer, B, c);
    writeRows(kc, k, pos0);
    writeRows(vc, v, pos0);
    k = kc;
    v = vc;
  }
  const y = fused.attention(q, k, v, pos0, 1 / Math.sqrt(hd));
  return linear(p, `${name}.o_proj`, tf.reshape(y, [B * T, c.n_embd]) as tf.Tensor2D, o);
}

/** A layer's preallocated cache tensors [B, n_ctx, n_kv_head, hd], made on first use. */
function cacheLayer(cache: KVCache, layer: number, B: number, c: ModelConfig): [tf.Tensor4D, tf.Tensor4D] {
  if (!cache.preallocated && cache.k.some((t) => t)) throw new Error('this KV cache was filled by the WASM kernels; switch kernels between generations only');
  cache.preallocated = true;
  if (!cache.k[layer] || cache.k[layer]!.shape[0] !== B) {
    cache.k[layer]?.dispose();
    cache.v[layer]?.dispose();
    const shape: [number, number, number, number] = [B, c.n_ctx, c.n_kv_head, c.n_embd / c.n_head];
    cache.k[layer] = tf.keep(tf.zeros(shape)) as tf.Tensor4D;
    cache.v[layer] = tf.keep(tf.zeros(shape)) as tf.Tensor4D;
  }
  return [cache.k[layer]!, cache.v[layer]!];
}

/**
 * Decoding with the native kernels: with a KV cache nothing is differentiated, so a block without LoRA
 * adapters runs as one native call doing exactly the per-op path's arithmetic (tested against it).
 */
function fusedBlock(p: Params, i: number, x: tf.Tensor2D, B: number, T: number, c: ModelConfig, o: ForwardOptions): tf.Tensor2D | undefined {
  const h = `h.${i}`;
  // Left-padded rows (per-row positions) and quantized weights (packed, no `.weight`) take the per-op path.
  if (!(o.cache || o.paged) || !nativeOps() || o.training || o.leftPad) return undefined;
  if (!p[`${h}.attn.q_proj.weight`] || !p[`${h}.mlp.down_proj.weight`] || !p[`${h}.mlp.up_proj.weight`]) return undefined;
  const names = { ln1w: `${h}.ln_1.weight`, ln1b: `${h}.ln_1.bias`, wq: `${h}.attn.q_proj.weight`, bq: `${h}.attn.q_proj.bias`, wk: `${h}.attn.k_proj.weight`,
    bk: `${h}.attn.k_proj.bias`, wv: `${h}.attn.v_proj.weight`, bv: `${h}.attn.v_proj.bias`, wo: `${h}.attn.o_proj.weight`, bo: `${h}.attn.o_proj.bias`,
    ln2w: `${h}.ln_2.weight`, ln2b: `${h}.ln_2.bias`, wg: `${h}.mlp.gate_proj.weight`, bg: `${h}.mlp.gate_proj.bias`, wu: `${h}.mlp.up_proj.weight`,
    bu: `${h}.mlp.up_proj.bias`, wd: `${h}.mlp.down_proj.weight`, bd: `${h}.mlp.down_proj.bias` };
  const inputs: Record<string, tf.Tensor> = {};
  for (const [slot, name] of Object.entries(names)) {
    if (p[name]) inputs[slot] = p[name]!;
    const base = name.replace(/\.weight$/, '');
    if (p[`${base}.lora_A`]) return undefined; // adapters take the per-op path
  }
  if (o.paged) return fused.pagedBlock(x, inputs, i, o.paged, c);
  const [kcache, vcache] = cacheLayer(o.cache!, i, B, c);
  const attrs = { T, H: c.n_head, inner: c.n_inner, pos0: o.cache!.length, eps: c.norm_eps, theta: c.rope_theta, llama: c.arch === 'llama' };
  return tf.engine().runKernel('LlmctlBlock', { x, kcache, vcache, ...inputs }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

function dropout(x: tf.Tensor2D, c: ModelConfig, o: ForwardOptions): tf.Tensor2D {
  return o.training && c.dropout > 0 ? fastDropout(x, c.dropout) : x;
}

/** The same attention block over a paged KV cache: the step's flat tokens, RoPE at each token's own position. */
function pagedAttn(p: Params, name: string, x: tf.Tensor2D, layer: number, c: ModelConfig, o: ForwardOptions, paged: PagedAttention): tf.Tensor2D {
  const N = x.shape[0], hd = c.n_embd / c.n_head;
  if (nativeOps()) {
    // One kernel: RoPE at each token's position, the pool writes and the attention, in the projections' layout.
    const [q, k, v] = (['q_proj', 'k_proj', 'v_proj'] as const).map((m) => linear(p, `${name}.${m}`, x, o));
    return linear(p, `${name}.o_proj`, fused.pagedAttention(q!, k!, v!, layer, paged, c), o);
  }
  const heads = (t: tf.Tensor2D, n: number) => tf.transpose(tf.reshape(t, [1, N, n, hd]), [0, 2, 1, 3]) as tf.Tensor4D;
  let q = heads(linear(p, `${name}.q_proj`, x, o), c.n_head);
  let k = heads(linear(p, `${name}.k_proj`, x, o), c.n_kv_head);
  const v = heads(linear(p, `${name}.v_proj`, x, o), c.n_kv_head);
  if (c.arch === 'llama') {
    q = ropeAt(q, paged.positions, c);
    k = ropeAt(k, paged.positions, c);
  }
  return linear(p, `${name}.o_proj`, paged.attend(layer, q, k, v), o);
}

/** `rope` with one position per token (x [1, H, N, hd]) instead of consecutive positions from pos0. */
function ropeAt(x: tf.Tensor4D, positions: Int32Array, c: ModelConfig): tf.Tensor4D {
  const hd = x.shape[3], half = hd / 2, N = positions.length;
  const cos = new Float32Array(N * half), sin = new Float32Array(N * half);
  for (let t = 0; t < N; t++) {
    for (let i = 0; i < half; i++) {
      const angle = positions[t]! * Math.pow(c.rope_theta, (-2 * i) / hd);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  const cosT = tf.tensor2d(cos, [N, half]), sinT = tf.tensor2d(sin, [N, half]);
  const [x1, x2] = tf.split(x, 2, -1) as [tf.Tensor4D, tf.Tensor4D];
  return tf.concat([tf.sub(tf.mul(x1, cosT), tf.mul(x2, sinT)), tf.add(tf.mul(x2, cosT), tf.mul(x1, sinT))], -1) as tf.Tensor4D;
}

/**
 * tokens [B, T] int32 → logits [B, T, vocab]. With a cache, positions continue from cache.length and
 * the cache grows by T.
 */
export function forward(p: Params, c: ModelConfig, tokens: tf.Tensor2D, o: ForwardOptions = {}): { logits: tf.Tensor3D; hidden?: tf.Tensor3D } {
  const [B, T] = tokens.shape;
  const pos0 = o.cache?.length ?? 0;
  const end = o.paged ? Math.max(0, ...o.paged.positions) + 1 : pos0 + T;
  if (end > c.n_ctx) throw new Error(`sequence of ${end} tokens exceeds the context length ${c.n_ctx}`);
  const out = tf.tidy(() => {
    let x = embedding(p['wte.weight'] as tf.Tensor2D, tf.reshape(tokens, [B * T]) as tf.Tensor1D);
    if (c.arch === 'gpt2' && o.leftPad) {
      const pos = Int32Array.from({ length: B * T }, (_, i) => Math.max(0, pos0 + (i % T) - o.leftPad![Math.floor(i / T)]!));
      // A one-hot matmul rather than `embedding`: its gradient saves the scope-local position ids.
      x = tf.add(x, matmul(oneHotFloat(tf.tensor1d(pos, 'int32'), c.n_ctx), p['wpe.weight'] as tf.Tensor2D));
    } else if (c.arch === 'gpt2' && o.paged) {
      x = tf.add(x, tf.gather(p['wpe.weight']!, tf.tensor1d(o.paged.positions, 'int32')));
    } else if (c.arch === 'gpt2') {
      const wpe = tf.slice(p['wpe.weight']!, [pos0, 0], [T, c.n_embd]);
      x = tf.reshape(tf.add(tf.reshape(x, [B, T, c.n_embd]), wpe), [B * T, c.n_embd]);
    }
    x = dropout(x, c, o);
    for (let i = 0; i < c.n_layer; i++) {
      const fusedX = fusedBlock(p, i, x, B, T, c, o);
      if (fusedX) {
        x = fusedX;
        continue;
      }
      x = tf.add(x, dropout(attn(p, `h.${i}.attn`, norm(p, `h.${i}.ln_1`, x, c), B, T, i, c, o), c, o));
      x = tf.add(x, dropout(mlp(p, `h.${i}.mlp`, norm(p, `h.${i}.ln_2`, x, c), c, o), c, o));
    }
    const h = norm(p, 'ln_f', x, c);
    // The tied head reads wte [vocab, d] transposed; the matmuls take that as a flag (no copy on native).
    const tied = c.tie_embeddings;
    const head = (tied ? p['wte.weight'] : p['lm_head.weight']) as tf.Tensor2D;
    const logits = tf.reshape(o.freezeBase ? matmulFrozen(h, head, tied) : matmul(h, head, tied), [B, T, c.vocab_size]) as tf.Tensor3D;
    return o.returnHidden ? { logits, hidden: tf.reshape(h, [B, T, c.n_embd]) as tf.Tensor3D } : { logits };
  });
  if (o.cache) o.cache.length += T;
  return out;
}
