/**
 * Quantized linear layers in the checkpoint file, in memory, and back to float.
 *
 * In the file (model.safetensors), per quantized module m (names as AutoGPTQ writes them):
 *   int4 (gptq layout, for rtn / gptq / awq):
 *     m.qweight  I32 [ceil(in/8), out]   eight 4-bit values per word along the input dimension
 *     m.qzeros   I32 [groups, ceil(out/8)]  zero point − 1 per group and output, eight per word
 *     m.scales   F16 [groups, out]
 *     m.g_idx    I32 [in]              group of each input column (act-order permutes it)
 *   int8:
 *     m.weight        I8  [out, in]
 *     m.weight_scale  F32 [out]         w ≈ weight · weight_scale (per output channel)
 *     m.outlier_idx   I32 [n]           optional (LLM.int8()'s outlier features): input columns kept in float,
 *     m.outlier_weight F32 [out, n]     their weights (the I8 weight is 0 there)
 * and config.json carries `quantization_config` ({quant_method, bits, group_size, desc_act, sym, …}).
 *
 * In memory the params map holds the packed integers as int32 tensors: int4 exactly as in the file
 * (scales as float32), int8 packed four signed bytes per int32 word, `m.qweight` [ceil(in/4), out]. tfjs has
 * no 8- or 4-bit dtype, so packing is what keeps resident weights at ~1 and ~0.5 bytes per weight.
 * `linear` in gpt.ts calls `dequantizeLinear` when a module has no float `m.weight`: the float matrix
 * exists only inside that forward pass's tidy scope.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type TensorData, f16ToF32, fromFloat32, toFloat32 } from '../checkpoint/safetensors.js';
import { type Int4Weight, type Int8Weight, numGroups, packQweight, packQzeros, unpackQzeros } from './int.js';

export type Params = Record<string, tf.Tensor>;

/** The `quantization_config` of config.json, in Hugging Face's shape plus llmctl's own fields. */
export interface QuantizationConfig {
  quant_method: 'gptq' | 'int8';
  bits: 4 | 8;
  /** Input columns per group; -1 = one group per output channel. */
  group_size: number;
  desc_act: boolean;
  sym: boolean;
  checkpoint_format?: 'gptq';
  damp_percent?: number;
  true_sequential?: boolean;
  /** How the integers were chosen: rtn | gptq | awq | int8. */
  llmctl_method: string;
  /** int8: input features whose calibration |x| reached this were kept in float (bitsandbytes' name). */
  llm_int8_threshold?: number;
  /** AWQ: α chosen per scaled group of layers. */
  llmctl_awq_alpha?: Record<string, number>;
}

export const QUANT_SUFFIXES_INT4 = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;

/** Parse and check config.json's quantization_config; `where` names the file in errors. */
export function parseQuantizationConfig(raw: unknown, where: string): QuantizationConfig {
  const bad = (field: string, reason: string): never => {
    throw new Error(`${where}: quantization_config.${field}: ${reason}`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${where}: quantization_config: expected an object`);
  const q = raw as Record<string, unknown>;
  if (q.quant_method !== 'gptq' && q.quant_method !== 'int8') bad('quant_method', `expected "gptq" or "int8", got ${JSON.stringify(q.quant_method)}`);
  const method = q.quant_method as 'gptq' | 'int8';
  const wantBits = method === 'gptq' ? 4 : 8;
  if (q.bits !== wantBits) bad('bits', `${method} checkpoints here are ${wantBits}-bit, got ${JSON.stringify(q.bits)}`);
  if (typeof q.group_size !== 'number' || !Number.isInteger(q.group_size) || (q.group_size < 1 && q.group_size !== -1)) bad('group_size', `expected a positive integer or -1, got ${JSON.stringify(q.group_size)}`);
  if (method === 'int8' && q.group_size !== -1) bad('group_size', `int8 is per output channel (-1), got ${q.group_size}`);
  if (typeof q.desc_act !== 'boolean') bad('desc_act', `expected true or false, got ${JSON.stringify(q.desc_act)}`);
  if (typeof q.sym !== 'boolean') bad('sym', `expected true or false, got ${JSON.stringify(q.sym)}`);
  if (method === 'int8' && q.sym !== true) bad('sym', 'int8 is symmetric (absmax)');
  if (q.checkpoint_format !== undefined && q.checkpoint_format !== 'gptq') bad('checkpoint_format', `only "gptq" (zero points stored minus one) is supported, got ${JSON.stringify(q.checkpoint_format)}`);
  return {
    quant_method: method,
    bits: wantBits,
    group_size: q.group_size as number,
    desc_act: q.desc_act as boolean,
    sym: q.sym as boolean,
    ...(q.checkpoint_format ? { checkpoint_format: 'gptq' as const } : {}),
    ...(typeof q.damp_percent === 'number' ? { damp_percent: q.damp_percent } : {}),
    ...(typeof q.true_sequential === 'boolean' ? { true_sequential: q.true_sequential } : {}),
    ...(typeof q.llm_int8_threshold === 'number' ? { llm_int8_threshold: q.llm_int8_threshold } : {}),
    llmctl_method: typeof q.llmctl_method === 'string' ? q.llmctl_method : method,
    ...(q.llmctl_awq_alpha && typeof q.llmctl_awq_alpha === 'object' ? { llmctl_awq_alpha: q.llmctl_awq_alpha as Record<string, number> } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Quantized weight → in-memory tensors
// ---------------------------------------------------------------------------------------------

/** int4 weight → the four in-memory tensors of module m. */
export function int4Tensors(m: string, x: Int4Weight): Params {
  const G = numGroups(x.in, x.groupSize);
  return {
    [`${m}.qweight`]: tf.tensor2d(packQweight(x.q, x.out, x.in), [Math.ceil(x.in / 8), x.out], 'int32'),
    [`${m}.qzeros`]: tf.tensor2d(packQzeros(x.zeros, G, x.out), [G, Math.ceil(x.out / 8)], 'int32'),
    [`${m}.scales`]: tf.tensor2d(x.scales, [G, x.out], 'float32'),
    [`${m}.g_idx`]: tf.tensor1d(x.gIdx, 'int32'),
  };
}

/** int8 [out, in] → four signed bytes per int32 word along the input dimension, [ceil(in/4), out]. */
export function packInt8(q: Int8Array, out: number, inn: number): Int32Array {
  const packed = new Int32Array(Math.ceil(inn / 4) * out);
  for (let c = 0; c < inn; c++) {
    const i = c >> 2, shift = (c & 3) * 8;
    for (let r = 0; r < out; r++) packed[i * out + r]! |= (q[r * inn + c]! & 0xff) << shift;
  }
  return packed;
}

export function unpackInt8(packed: Int32Array, out: number, inn: number): Int8Array {
  const q = new Int8Array(out * inn);
  for (let c = 0; c < inn; c++) {
    const i = c >> 2, shift = 24 - (c & 3) * 8;
    for (let r = 0; r < out; r++) q[r * inn + c] = (packed[i * out + r]! << shift) >> 24;
  }
  return q;
}

export function int8Tensors(m: string, x: Int8Weight): Params {
  const o = x.outliers;
  return {
    [`${m}.qweight`]: tf.tensor2d(packInt8(x.q, x.out, x.in), [Math.ceil(x.in / 4), x.out], 'int32'),
    [`${m}.weight_scale`]: tf.tensor1d(x.scale, 'float32'),
    // In memory the outlier weights are rows of the [in, out] matrix: [n, out].
    ...(o ? { [`${m}.outlier_idx`]: tf.tensor1d(o.idx, 'int32'), [`${m}.outlier_weight`]: tf.tidy(() => tf.transpose(tf.tensor2d(o.w, [x.out, o.idx.length]))) } : {}),
  };
}

/** Suffixes of the in-memory tensors of a packed module. */
export const PACKED_SUFFIX = /\.(qweight|qzeros|scales|g_idx|weight_scale|outlier_idx|outlier_weight)$/;

/** Module names (without .weight) that are quantized in a params map. */
export function quantizedModules(p: Params): string[] {
  return Object.keys(p).filter((k) => k.endsWith('.qweight')).map((k) => k.slice(0, -'.qweight'.length));
}

// ---------------------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------------------

/** Float weights of quantized module m in the model's [in, out] orientation, computed in JS from the packed words. */
export function dequantizeModule(p: Params, m: string, inn: number): Float32Array {
  const qw = p[`${m}.qweight`];
  if (!qw) throw new Error(`no weight for '${m}' (neither ${m}.weight nor ${m}.qweight)`);
  const out = qw.shape[1]!;
  const words = qw.dataSync() as Int32Array;
  const w = new Float32Array(inn * out);
  const int8Scale = p[`${m}.weight_scale`];
  if (int8Scale) {
    const s = int8Scale.dataSync() as Float32Array;
    for (let c = 0; c < inn; c++) {
      const row = (c >> 2) * out, shift = 24 - (c & 3) * 8;
      for (let j = 0; j < out; j++) w[c * out + j] = ((words[row + j]! << shift) >> 24) * s[j]!;
    }
    const idx = p[`${m}.outlier_idx`];
    if (idx) {
      const rows = p[`${m}.outlier_weight`]!.dataSync() as Float32Array;
      (idx.dataSync() as Int32Array).forEach((c, k) => w.set(rows.subarray(k * out, (k + 1) * out), c * out));
    }
    return w;
  }
  const scales = p[`${m}.scales`]!.dataSync() as Float32Array;
  const gIdx = p[`${m}.g_idx`]!.dataSync() as Int32Array;
  const G = p[`${m}.scales`]!.shape[0]!;
  const zeros = unpackQzeros(p[`${m}.qzeros`]!.dataSync() as Int32Array, G, out);
  for (let c = 0; c < inn; c++) {
    const row = (c >> 3) * out, shift = (c & 7) * 4, g = gIdx[c]! * out;
    for (let j = 0; j < out; j++) w[c * out + j] = Math.fround((((words[row + j]! >>> shift) & 15) - zeros[g + j]!) * scales[g + j]!);
  }
  return w;
}

/** The float [in, out] weight of module m for a forward pass (inn = the input's width). */
export function dequantizeLinear(p: Params, m: string, inn: number): tf.Tensor2D {
  const qw = p[`${m}.qweight`];
  if (!qw) throw new Error(`no weight for '${m}' (neither ${m}.weight nor ${m}.qweight)`);
  return tf.tensor2d(dequantizeModule(p, m, inn), [inn, qw.shape[1]!]);
}

/** A float params map from a (partly) quantized one: for merging, exporting, or comparing. */
export function dequantizeParams(p: Params, shapes: Record<string, number[]>): Params {
  const out: Params = {};
  const quantized = new Set(quantizedModules(p));
  for (const [name, t] of Object.entries(p)) {
    const m = name.replace(PACKED_SUFFIX, '');
    if (quantized.has(m) && m !== name) continue;
    out[name] = tf.clone(t);
  }
  for (const m of quantized) {
    const shape = shapes[`${m}.weight`];
    if (!shape) throw new Error(`quantized module '${m}' is not a weight of this model`);
    out[`${m}.weight`] = dequantizeLinear(p, m, shape[0]!);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// File records ↔ in-memory tensors
// ---------------------------------------------------------------------------------------------

/** The file records of quantized module m (see the header), from its in-memory tensors, named `f.qweight` etc. */
export function quantizedFileRecords(p: Params, m: string, inn: number, f: string): Record<string, TensorData> {
  const qw = p[`${m}.qweight`]!;
  const out = qw.shape[1]!;
  const int8Scale = p[`${m}.weight_scale`];
  if (int8Scale) {
    const idx = p[`${m}.outlier_idx`];
    const outliers = (): Record<string, TensorData> => {
      const ow = tf.tidy(() => tf.transpose(p[`${m}.outlier_weight`]!)); // file: [out, n]
      const rec: Record<string, TensorData> = {
        [`${f}.outlier_idx`]: { dtype: 'I32', shape: [idx!.size], data: Int32Array.from(idx!.dataSync() as Int32Array) },
        [`${f}.outlier_weight`]: { dtype: 'F32', shape: ow.shape.slice(), data: Float32Array.from(ow.dataSync() as Float32Array) },
      };
      ow.dispose();
      return rec;
    };
    return {
      [`${f}.weight`]: { dtype: 'I8', shape: [out, inn], data: unpackInt8(qw.dataSync() as Int32Array, out, inn) },
      [`${f}.weight_scale`]: { dtype: 'F32', shape: [out], data: Float32Array.from(int8Scale.dataSync() as Float32Array) },
      ...(idx ? outliers() : {}),
    };
  }
  const rec = (name: string, dtype: 'I32', t: tf.Tensor): TensorData => ({ dtype, shape: t.shape.slice(), data: Int32Array.from(t.dataSync() as Int32Array) });
  const scales = p[`${m}.scales`]!;
  return {
    [`${f}.qweight`]: rec('qweight', 'I32', qw),
    [`${f}.qzeros`]: rec('qzeros', 'I32', p[`${m}.qzeros`]!),
    [`${f}.scales`]: fromFloat32(Float32Array.from(scales.dataSync() as Float32Array), scales.shape.slice(), 'F16'),
    [`${f}.g_idx`]: rec('g_idx', 'I32', p[`${m}.g_idx`]!),
  };
}

/**
 * Check and load quantized module m, stored as `f.qweight` etc., from the file's records (`take` removes a
 * record and returns it, or undefined). `in`/`out` come from config.json; every mismatch names the tensor.
 */
export function loadQuantizedModule(m: string, f: string, inn: number, out: number, q: QuantizationConfig, take: (name: string) => TensorData | undefined, where: string): Params {
  const need = (suffix: string, dtypes: string[], shape: number[]): TensorData => {
    const t = take(`${f}.${suffix}`);
    if (!t) throw new Error(`${where}: missing tensor '${f}.${suffix}' (quantization_config says ${q.quant_method} ${q.bits}-bit)`);
    if (!dtypes.includes(t.dtype)) throw new Error(`${where}: '${f}.${suffix}' is ${t.dtype}, expected ${dtypes.join(' or ')}`);
    if (t.shape.join(',') !== shape.join(',')) throw new Error(`${where}: '${f}.${suffix}' has shape [${t.shape}] but config.json and quantization_config imply [${shape}]`);
    return t;
  };
  if (q.bits === 8) {
    const w = need('weight', ['I8'], [out, inn]);
    const s = need('weight_scale', ['F32', 'F16'], [out]);
    const scale = toFloat32(s);
    if (!scale.every((v) => Number.isFinite(v))) throw new Error(`${where}: '${f}.weight_scale' holds non-finite values`);
    const idx = take(`${f}.outlier_idx`), ow = take(`${f}.outlier_weight`);
    if (!idx !== !ow) throw new Error(`${where}: '${f}.${idx ? 'outlier_weight' : 'outlier_idx'}' is missing (outlier columns need both)`);
    let outliers: Int8Weight['outliers'];
    if (idx && ow) {
      if (idx.dtype !== 'I32' || idx.shape.length !== 1) throw new Error(`${where}: '${f}.outlier_idx' must be I32 [n]`);
      const n = idx.shape[0]!;
      if (ow.dtype !== 'F32' || ow.shape.join(',') !== `${out},${n}`) throw new Error(`${where}: '${f}.outlier_weight' has shape [${ow.shape}] (${ow.dtype}), expected F32 [${out},${n}]`);
      const cols = idx.data as Int32Array;
      cols.forEach((c, k) => {
        if (c < 0 || c >= inn || (k > 0 && c <= cols[k - 1]!)) throw new Error(`${where}: '${f}.outlier_idx'[${k}] = ${c}: indices must be increasing input columns 0..${inn - 1}`);
      });
      outliers = { idx: cols, w: ow.data as Float32Array };
    }
    return int8Tensors(m, { out, in: inn, q: w.data as Int8Array, scale: Float32Array.from(scale), ...(outliers ? { outliers } : {}) });
  }
  const G = numGroups(inn, q.group_size);
  const qweight = need('qweight', ['I32'], [Math.ceil(inn / 8), out]);
  const qzeros = need('qzeros', ['I32'], [G, Math.ceil(out / 8)]);
  const scales = need('scales', ['F16', 'F32'], [G, out]);
  const gIdx = need('g_idx', ['I32'], [inn]);
  const g = gIdx.data as Int32Array;
  for (let c = 0; c < inn; c++) {
    if (g[c]! < 0 || g[c]! >= G) throw new Error(`${where}: '${f}.g_idx'[${c}] = ${g[c]} is not a group index (0..${G - 1} for in_features ${inn}, group_size ${q.group_size})`);
    if (!q.desc_act && q.group_size > 0 && g[c] !== Math.floor(c / q.group_size)) {
      throw new Error(`${where}: '${f}.g_idx'[${c}] = ${g[c]} but desc_act is false and group_size ${q.group_size} puts column ${c} in group ${Math.floor(c / q.group_size)}`);
    }
  }
  const s = scales.dtype === 'F16' ? Float32Array.from(scales.data as Uint16Array, f16ToF32) : Float32Array.from(scales.data as Float32Array);
  if (!s.every((v) => Number.isFinite(v))) throw new Error(`${where}: '${f}.scales' holds non-finite values`);
  return {
    [`${m}.qweight`]: tf.tensor2d(qweight.data as Int32Array, qweight.shape as [number, number], 'int32'),
    [`${m}.qzeros`]: tf.tensor2d(qzeros.data as Int32Array, qzeros.shape as [number, number], 'int32'),
    [`${m}.scales`]: tf.tensor2d(s, [G, out], 'float32'),
    [`${m}.g_idx`]: tf.tensor1d(g, 'int32'),
  };
}
