/**
 * Quantize a whole model: every linear projection of every block (embeddings, norms and the LM head stay
 * float). RTN methods work weight by weight; GPTQ and AWQ go block by block as their papers do: run the
 * calibration tokens through the model — whose earlier blocks are already quantized — up to block l,
 * capture the inputs of block l's linears, quantize them, go on to block l + 1.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { type ModelConfig, type Params, forward, isLinearWeight, paramShapes } from '../model/gpt.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { tokenNll } from '../train/losses.js';
import { log } from '../util/log.js';
import { awqSearch } from './awq.js';
import { gptqQuantize } from './gptq.js';
import { type GroupSpec, type Int4Weight, quantizeInt8, quantizeRtn } from './int.js';
import { PACKED_SUFFIX, type QuantizationConfig, int4Tensors, int8Tensors } from './tensors.js';

export interface QuantizeSettings {
  method: 'int8' | 'int4' | 'gptq' | 'awq';
  group_size: number;
  sym: boolean;
  desc_act: boolean;
  damp_percent: number;
  block_size: number;
  awq_grid: number;
  /** int8: input features whose calibration |x| reaches this stay float (LLM.int8()'s 6.0); 0 = none. */
  outlier_threshold?: number;
}

export interface QuantizeOutcome {
  /** The model with its linears packed (the float params given are consumed). */
  params: Params;
  quantization: QuantizationConfig;
  /** Module names quantized / left float. */
  quantized: string[];
  float: string[];
  /** awq: chosen α per scaled group ("h.0 ln_1→q,k,v"). */
  alphas?: Record<string, number>;
}

/** Linear modules of a model in forward order (h.0.attn.q_proj, …), without the LM head. */
export function linearModules(c: ModelConfig): string[] {
  return Object.keys(paramShapes(c)).filter((n) => isLinearWeight(n) && n.startsWith('h.')).map((n) => n.slice(0, -'.weight'.length));
}

/** A weight as torch's [out, in] Float32Array (the model keeps [in, out]). */
function torchWeight(t: tf.Tensor): Float32Array {
  return tf.tidy(() => tf.transpose(t).dataSync() as Float32Array);
}

export function quantizationConfig(s: QuantizeSettings, alphas?: Record<string, number>): QuantizationConfig {
  if (s.method === 'int8') return { quant_method: 'int8', bits: 8, group_size: -1, desc_act: false, sym: true, llmctl_method: 'int8', ...(s.outlier_threshold ? { llm_int8_threshold: s.outlier_threshold } : {}) };
  return {
    quant_method: 'gptq',
    bits: 4,
    group_size: s.group_size,
    desc_act: s.method === 'gptq' && s.desc_act,
    sym: s.sym,
    checkpoint_format: 'gptq',
    ...(s.method === 'gptq' ? { damp_percent: s.damp_percent, true_sequential: false } : {}),
    llmctl_method: s.method === 'int4' ? 'rtn' : s.method,
    ...(alphas ? { llmctl_awq_alpha: alphas } : {}),
  };
}

/** Swap module m's float weight for its packed tensors. */
function replaceWeight(p: Params, m: string, packed: Params): void {
  p[`${m}.weight`]!.dispose();
  delete p[`${m}.weight`];
  Object.assign(p, packed);
}

export function quantizeModel(params: Params, config: ModelConfig, s: QuantizeSettings, calibration?: number[][]): QuantizeOutcome {
  const p: Params = { ...params };
  const spec: GroupSpec = { bits: 4, groupSize: s.group_size, sym: s.sym };
  const modules = linearModules(config);
  const shapes = paramShapes(config);
  let alphas: Record<string, number> | undefined;
  if (s.method === 'int8' && s.outlier_threshold) {
    if (!calibration?.length) throw new Error('int8 with outlier_threshold needs calibration samples');
    for (let l = 0; l < config.n_layer; l++) {
      const inputs = captureInputs(p, config, calibration, l);
      for (const m of modules.filter((x) => x.startsWith(`h.${l}.`))) {
        const [inn, out] = shapes[`${m}.weight`] as [number, number];
        const peak = tf.tidy(() => tf.max(tf.abs(inputs.get(m)!), 0).dataSync() as Float32Array);
        const outliers = [...peak.keys()].filter((c) => peak[c]! >= s.outlier_threshold!);
        replaceWeight(p, m, int8Tensors(m, quantizeInt8(torchWeight(p[`${m}.weight`]!), out, inn, outliers)));
      }
      for (const x of new Set(inputs.values())) x.dispose();
    }
  } else if (s.method === 'int8' || s.method === 'int4') {
    for (const m of modules) {
      const [inn, out] = shapes[`${m}.weight`] as [number, number];
      const w = torchWeight(p[`${m}.weight`]!);
      replaceWeight(p, m, s.method === 'int8' ? int8Tensors(m, quantizeInt8(w, out, inn)) : int4Tensors(m, quantizeRtn(w, out, inn, spec)));
    }
  } else {
    if (!calibration?.length) throw new Error(`${s.method} needs calibration samples`);
    alphas = s.method === 'awq' ? {} : undefined;
    for (let l = 0; l < config.n_layer; l++) {
      const t0 = performance.now();
      const block = modules.filter((m) => m.startsWith(`h.${l}.`));
      const inputs = captureInputs(p, config, calibration, l);
      if (s.method === 'awq') Object.assign(alphas!, applyAwqScales(p, config, l, inputs, spec, s.awq_grid));
      for (const m of block) {
        const [inn, out] = shapes[`${m}.weight`] as [number, number];
        const w = torchWeight(p[`${m}.weight`]!);
        let q: Int4Weight;
        if (s.method === 'gptq') {
          const x = inputs.get(m)!;
          q = gptqQuantize(w, out, inn, hessianOf(x), { ...spec, dampPercent: s.damp_percent, blockSize: s.block_size, actOrder: s.desc_act });
        } else {
          q = quantizeRtn(w, out, inn, spec);
        }
        replaceWeight(p, m, int4Tensors(m, q));
      }
      for (const x of new Set(inputs.values())) x.dispose();
      log().info({ layer: l, modules: block.length, ms: Math.round(performance.now() - t0) }, `${s.method}: block ${l + 1}/${config.n_layer}`);
    }
  }
  return {
    params: p,
    quantization: quantizationConfig(s, alphas),
    quantized: modules,
    float: Object.keys(p).filter((k) => !PACKED_SUFFIX.test(k)),
    alphas,
  };
}

/** GPTQ's H = 2·XᵀX/N for inputs X [N, in], the product on the tfjs backend, then Float64. */
export function hessianOf(x: tf.Tensor2D): Float64Array {
  const h = tf.tidy(() => tf.mul(tf.matMul(tf.transpose(x) as tf.Tensor2D, x), 2 / x.shape[0]));
  const out = Float64Array.from(h.dataSync() as Float32Array);
  h.dispose();
  return out;
}

class StopForward extends Error {}

/**
 * Inputs [N, in] of each linear of block `layer` over the calibration samples (one tensor per distinct
 * input: q/k/v share theirs). The forward stops after the block's last linear.
 */
export function captureInputs(p: Params, config: ModelConfig, samples: number[][], layer: number): Map<string, tf.Tensor2D> {
  const prefix = `h.${layer}.`;
  const parts = new Map<string, tf.Tensor2D[]>();
  const last = linearModules(config).filter((m) => m.startsWith(prefix)).at(-1)!;
  const seen = new Map<number, string>(); // tensor id → first module that read it
  const alias = new Map<string, string>();
  for (const ids of samples) {
    const tokens = tf.tensor2d([ids], [1, ids.length], 'int32');
    try {
      forward(p, config, tokens, {
        onLinearInput: (m, x) => {
          if (!m.startsWith(prefix)) return;
          const first = seen.get(x.id);
          if (first !== undefined) alias.set(m, first);
          else {
            seen.set(x.id, m);
            if (!parts.has(m)) parts.set(m, []);
            parts.get(m)!.push(tf.keep(tf.clone(x)));
          }
          if (m === last) throw new StopForward();
        },
      });
    } catch (err) {
      if (!(err instanceof StopForward)) throw err;
    } finally {
      tokens.dispose();
      seen.clear();
    }
  }
  const out = new Map<string, tf.Tensor2D>();
  for (const [m, xs] of parts) {
    out.set(m, tf.concat(xs, 0) as tf.Tensor2D);
    xs.forEach((x) => x.dispose());
  }
  for (const [m, first] of alias) out.set(m, out.get(first)!);
  return out;
}

// ---------------------------------------------------------------------------------------------
// AWQ: search and fold the scales of one block
// ---------------------------------------------------------------------------------------------

/** Rows used by AWQ's search (a strided subset keeps the 20-point grid cheap). */
const AWQ_MAX_ROWS = 1024;

/**
 * For each (previous op → layers) pair of block l where the scales can be folded, search α, then scale
 * the layers' input rows by s and divide the previous op's output by s (norm weight and bias, or the
 * previous linear's output columns and bias). The model's function is unchanged before rounding.
 */
function applyAwqScales(p: Params, c: ModelConfig, l: number, inputs: Map<string, tf.Tensor2D>, spec: GroupSpec, grid: number): Record<string, number> {
  const h = `h.${l}`;
  const pairs: Array<{ prev: string; kind: 'norm' | 'linear'; layers: string[] }> = [
    { prev: `${h}.ln_1`, kind: 'norm', layers: ['q_proj', 'k_proj', 'v_proj'].map((n) => `${h}.attn.${n}`) },
    ...(c.n_kv_head === c.n_head ? [{ prev: `${h}.attn.v_proj`, kind: 'linear' as const, layers: [`${h}.attn.o_proj`] }] : []),
    { prev: `${h}.ln_2`, kind: 'norm', layers: (c.arch === 'llama' ? ['gate_proj', 'up_proj'] : ['up_proj']).map((n) => `${h}.mlp.${n}`) },
    ...(c.arch === 'llama' ? [{ prev: `${h}.mlp.up_proj`, kind: 'linear' as const, layers: [`${h}.mlp.down_proj`] }] : []),
  ];
  const alphas: Record<string, number> = {};
  for (const { prev, kind, layers } of pairs) {
    const x = inputs.get(layers[0]!)!;
    const rows = x.shape[0];
    const step = Math.max(1, Math.floor(rows / AWQ_MAX_ROWS));
    const sub = tf.tidy(() => (step > 1 ? tf.gather(x, tf.range(0, rows, step, 'int32')) : tf.clone(x))) as tf.Tensor2D;
    const r = awqSearch(sub, layers.map((m) => ({ w: torchWeight(p[`${m}.weight`]!), out: p[`${m}.weight`]!.shape[1]! })), spec, grid);
    sub.dispose();
    alphas[`${prev}→${layers.map((m) => m.split('.').pop()!.replace('_proj', '')).join(',')}`] = r.alpha;
    if (r.alpha === 0) continue;
    const s = tf.tensor1d(r.scales);
    const swap = (name: string, f: (t: tf.Tensor) => tf.Tensor) => {
      const old = p[name]!;
      p[name] = tf.tidy(() => f(old));
      old.dispose();
    };
    for (const m of layers) swap(`${m}.weight`, (w) => tf.mul(w, tf.reshape(s, [-1, 1]))); // [in, out]: row i · s_i
    if (kind === 'norm') {
      swap(`${prev}.weight`, (w) => tf.div(w, s));
      if (p[`${prev}.bias`]) swap(`${prev}.bias`, (b) => tf.div(b, s));
    } else {
      swap(`${prev}.weight`, (w) => tf.div(w, s)); // [in, out]: output column j / s_j
      if (p[`${prev}.bias`]) swap(`${prev}.bias`, (b) => tf.div(b, s));
    }
    s.dispose();
  }
  return alphas;
}

// ---------------------------------------------------------------------------------------------
// Text → token samples, perplexity
// ---------------------------------------------------------------------------------------------

/** The text of a plain-text or JSONL file (JSONL: the field of every line, joined by blank lines). */
export function readText(path: string, field = 'text'): string {
  const raw = readFileSync(path, 'utf8');
  if (!path.endsWith('.jsonl')) return raw;
  return raw.split('\n').filter((l) => l.trim()).map((line, i) => {
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch {
      throw new Error(`${path}: line ${i + 1}: not valid JSON`);
    }
    const v = (row as Record<string, unknown>)[field];
    if (typeof v !== 'string') throw new Error(`${path}: line ${i + 1}: field '${field}' is missing or not a string`);
    return v;
  }).join('\n\n');
}

/** Tokens of the first `need` tokens' worth of text (from the start, or from the end with fromEnd). */
export function tokensOf(tokenizer: Tokenizer, text: string, need: number, fromEnd = false): number[] {
  // Encoding a whole corpus is slow in JS: encode a slice that is long enough, growing it if not.
  for (let chars = need * 8; ; chars *= 2) {
    const slice = chars >= text.length ? text : fromEnd ? text.slice(text.length - chars) : text.slice(0, chars);
    const ids = tokenizer.encode(slice);
    if (ids.length >= need || slice === text) return fromEnd ? ids.slice(-need) : ids.slice(0, need);
  }
}

/** Consecutive samples of seqLen tokens (at most `samples` of them). */
export function calibrationSamples(ids: number[], samples: number, seqLen: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i + seqLen <= ids.length && out.length < samples; i += seqLen) out.push(ids.slice(i, i + seqLen));
  return out;
}

/** exp(mean next-token NLL) over non-overlapping windows of n_ctx + 1 tokens. */
export function perplexity(p: Params, c: ModelConfig, ids: number[], batchSize = 8): { ppl: number; tokens: number } {
  const W = c.n_ctx + 1;
  const windows: number[][] = [];
  for (let i = 0; i + W <= ids.length; i += c.n_ctx) windows.push(ids.slice(i, i + W));
  if (!windows.length) throw new Error(`perplexity needs at least n_ctx + 1 = ${W} tokens, got ${ids.length}`);
  let sum = 0, n = 0;
  for (let b = 0; b < windows.length; b += batchSize) {
    const group = windows.slice(b, b + batchSize);
    const nll = tf.tidy(() => {
      const inputs = tf.tensor2d(group.map((w) => w.slice(0, -1)), [group.length, c.n_ctx], 'int32');
      const targets = tf.tensor1d(group.flatMap((w) => w.slice(1)), 'int32');
      const { logits } = forward(p, c, inputs);
      return tf.sum(tokenNll(tf.reshape(logits, [-1, c.vocab_size]) as tf.Tensor2D, targets));
    });
    sum += nll.dataSync()[0]!;
    nll.dispose();
    n += group.length * c.n_ctx;
  }
  return { ppl: Math.exp(sum / n), tokens: n };
}
