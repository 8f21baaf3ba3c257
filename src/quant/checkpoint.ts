/**
 * The quantized side of the one checkpoint reader/writer (src/checkpoint/model.ts calls these when
 * config.json has a `quantization_config`, or when the params to save hold packed modules).
 *
 * Names follow the Hugging Face mapping of src/checkpoint/hf-names.ts, as AutoGPTQ writes them:
 * `model.layers.0.self_attn.q_proj.qweight`, … GPT-2's q/k/v are one module there (`attn.c_attn`), so
 * their packed tensors are concatenated along the output dimension (their g_idx are equal: q, k and v read
 * the same input, so every method groups — and act-order permutes — their columns alike).
 * Everything that is not quantized goes through the float mapping unchanged.
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { type HostTensor, fromFileTensors, hfModuleName, toHfTensors } from '../checkpoint/hf-names.js';
import { readJson } from '../checkpoint/manifest.js';
import type { TensorData } from '../checkpoint/safetensors.js';
import { type ModelConfig, isLinearWeight, paramShapes } from '../model/gpt.js';
import { numGroups, packQzeros, unpackQzeros } from './int.js';
import { PACKED_SUFFIX, type Params, type QuantizationConfig, loadQuantizedModule, parseQuantizationConfig, quantizedFileRecords, quantizedModules } from './tensors.js';


/** config.json's quantization_config, checked; undefined for a float checkpoint. */
export function readQuantizationConfig(dir: string): QuantizationConfig | undefined {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) return undefined;
  const raw = readJson(path, 'model config') as Record<string, unknown>;
  return raw.quantization_config === undefined ? undefined : parseQuantizationConfig(raw.quantization_config, path);
}

/** The float entries of a (partly) quantized params map. */
export function floatParams(p: Params): Params {
  const modules = new Set(quantizedModules(p));
  return Object.fromEntries(Object.entries(p).filter(([k]) => !(PACKED_SUFFIX.test(k) && modules.has(k.replace(PACKED_SUFFIX, '')))));
}

const QKV = ['q_proj', 'k_proj', 'v_proj'];
const isFusedQkv = (c: ModelConfig, m: string) => c.arch === 'gpt2' && /\.attn\.[qkv]_proj$/.test(m);

/** A module's float weight as the HF file holds it: Linear [out, in] (Llama), Conv1D [in, out] (GPT-2, q/k/v fused). */
function fileWeightShape(c: ModelConfig, m: string, inn: number, out: number): number[] {
  if (c.arch === 'llama') return [out, inn];
  return isFusedQkv(c, m) ? [inn, 3 * out] : [inn, out];
}

/** Concatenate row-major [rows, w_k] arrays along columns. */
function concatCols<T extends Int32Array | Uint16Array | Uint8Array | Int8Array | Float32Array>(parts: T[], rows: number): T {
  const widths = parts.map((p) => p.length / rows), total = widths.reduce((a, b) => a + b, 0);
  const out = new (parts[0]!.constructor as new (n: number) => T)(rows * total);
  for (let r = 0; r < rows; r++) {
    let at = r * total;
    parts.forEach((p, k) => {
      out.set(p.subarray(r * widths[k]!, (r + 1) * widths[k]!), at);
      at += widths[k]!;
    });
  }
  return out;
}

function sliceCols<T extends Int32Array | Uint16Array | Uint8Array | Int8Array | Float32Array>(a: T, rows: number, c0: number, n: number): T {
  const w = a.length / rows;
  const out = new (a.constructor as new (n: number) => T)(rows * n);
  for (let r = 0; r < rows; r++) out.set(a.subarray(r * w + c0, r * w + c0 + n), r * n);
  return out;
}

/** GPT-2: q, k, v records (each under `f`) → one fused c_attn record set. */
function fuseQkv(parts: Array<Record<string, TensorData>>, f: string, d: number, bits: 4 | 8): Record<string, TensorData> {
  const get = (k: number, s: string) => parts[k]![`x.${s}`]!;
  if (bits === 8) {
    const w = get(0, 'weight'), idx = parts[0]!['x.outlier_idx'];
    // q, k and v read the same input, so they share their outlier columns; the float rows stack like the weights.
    const outliers: Record<string, TensorData> = idx
      ? {
          [`${f}.outlier_idx`]: idx,
          [`${f}.outlier_weight`]: { dtype: 'F32', shape: [3 * d, idx.shape[0]!], data: concatCols([0, 1, 2].map((k) => get(k, 'outlier_weight').data as Float32Array), 1) },
        }
      : {};
    return {
      [`${f}.weight`]: { dtype: 'I8', shape: [3 * d, w.shape[1]!], data: concatCols([0, 1, 2].map((k) => get(k, 'weight').data as Int8Array), 1) },
      [`${f}.weight_scale`]: { dtype: 'F32', shape: [3 * d], data: concatCols([0, 1, 2].map((k) => get(k, 'weight_scale').data as Float32Array), 1) },
      ...outliers,
    };
  }
  const gIdx = get(0, 'g_idx').data as Int32Array;
  for (const k of [1, 2]) {
    if (!(get(k, 'g_idx').data as Int32Array).every((g, i) => g === gIdx[i])) throw new Error(`${f}: q, k and v have different g_idx; they cannot share GPT-2's fused c_attn`);
  }
  const R = get(0, 'qweight').shape[0]!, G = get(0, 'scales').shape[0]!;
  const zeros = concatCols([0, 1, 2].map((k) => unpackQzeros(get(k, 'qzeros').data as Int32Array, G, d)), G);
  return {
    [`${f}.qweight`]: { dtype: 'I32', shape: [R, 3 * d], data: concatCols([0, 1, 2].map((k) => get(k, 'qweight').data as Int32Array), R) },
    [`${f}.qzeros`]: { dtype: 'I32', shape: [G, Math.ceil((3 * d) / 8)], data: packQzeros(zeros, G, 3 * d) },
    [`${f}.scales`]: { dtype: 'F16', shape: [G, 3 * d], data: concatCols([0, 1, 2].map((k) => get(k, 'scales').data as Uint16Array), G) },
    [`${f}.g_idx`]: { dtype: 'I32', shape: [gIdx.length], data: gIdx },
  };
}

/** GPT-2: the fused c_attn records → q, k, v record sets (each still named `f.*`), shapes checked on the way. */
function splitQkv(take: (n: string) => TensorData | undefined, f: string, d: number, inn: number, q: QuantizationConfig, where: string): Array<Map<string, TensorData>> {
  const need = (s: string, cols: number, rows?: number): TensorData => {
    const t = take(`${f}.${s}`);
    if (!t) throw new Error(`${where}: missing tensor '${f}.${s}' (quantization_config says ${q.quant_method} ${q.bits}-bit)`);
    const ok = t.shape.length === (rows === undefined ? 1 : 2) && t.shape.at(-1) === cols && (rows === undefined || t.shape[0] === rows);
    if (!ok) throw new Error(`${where}: '${f}.${s}' has shape [${t.shape}] but config.json and quantization_config imply [${rows === undefined ? cols : `${rows},${cols}`}]`);
    return t;
  };
  const parts = [0, 1, 2].map(() => new Map<string, TensorData>());
  if (q.bits === 8) {
    const w = take(`${f}.weight`)!;
    if (w.shape.join(',') !== `${3 * d},${inn}`) throw new Error(`${where}: '${f}.weight' has shape [${w.shape}] but config.json implies [${3 * d},${inn}]`);
    const s = need('weight_scale', 3 * d);
    const idx = take(`${f}.outlier_idx`), ow = take(`${f}.outlier_weight`);
    const n = idx?.shape[0] ?? 0;
    if (ow && ow.shape.join(',') !== `${3 * d},${n}`) throw new Error(`${where}: '${f}.outlier_weight' has shape [${ow.shape}], expected [${3 * d},${n}]`);
    parts.forEach((p, k) => {
      p.set(`${f}.weight`, { dtype: 'I8', shape: [d, inn], data: (w.data as Int8Array).slice(k * d * inn, (k + 1) * d * inn) });
      p.set(`${f}.weight_scale`, { dtype: s.dtype, shape: [d], data: s.data.slice(k * d, (k + 1) * d) as Float32Array });
      if (idx) p.set(`${f}.outlier_idx`, idx);
      if (ow) p.set(`${f}.outlier_weight`, { dtype: ow.dtype, shape: [d, n], data: (ow.data as Float32Array).slice(k * d * n, (k + 1) * d * n) });
    });
    return parts;
  }
  const G = numGroups(inn, q.group_size), R = Math.ceil(inn / 8);
  const qweight = need('qweight', 3 * d, R), qzeros = need('qzeros', Math.ceil((3 * d) / 8), G), scales = need('scales', 3 * d, G), gIdx = need('g_idx', inn);
  if (qweight.dtype !== 'I32' || qzeros.dtype !== 'I32' || gIdx.dtype !== 'I32') throw new Error(`${where}: '${f}' packed tensors must be I32`);
  const zeros = unpackQzeros(qzeros.data as Int32Array, G, 3 * d);
  parts.forEach((p, k) => {
    p.set(`${f}.qweight`, { dtype: 'I32', shape: [R, d], data: sliceCols(qweight.data as Int32Array, R, k * d, d) });
    p.set(`${f}.qzeros`, { dtype: 'I32', shape: [G, Math.ceil(d / 8)], data: packQzeros(sliceCols(zeros, G, k * d, d), G, d) });
    p.set(`${f}.scales`, { dtype: scales.dtype, shape: [G, d], data: sliceCols(scales.data as Uint16Array, G, k * d, d) });
    p.set(`${f}.g_idx`, gIdx);
  });
  return parts;
}

/**
 * model.safetensors records of a partly quantized model: the float entries (host copies) through the HF
 * mapping, each quantized module as its packed tensors under its HF module name.
 */
export function quantizedModelRecords(c: ModelConfig, params: Params, floatHost: Record<string, HostTensor>): Record<string, TensorData> {
  const modules = quantizedModules(params);
  const shapes = paramShapes(c);
  if (c.arch === 'gpt2' && c.n_kv_head !== c.n_head) throw new Error('a GPT-2 model with grouped-query attention cannot be saved quantized (GPT2LMHeadModel\'s fused c_attn has no kv heads)');
  // Zero stand-ins let the float mapping see a whole model; their HF weights are then dropped for the packed ones.
  const full = { ...floatHost };
  for (const m of modules) {
    const shape = shapes[`${m}.weight`]!;
    full[`${m}.weight`] = { shape, data: new Float32Array(shape[0]! * shape[1]!) };
  }
  const hf = toHfTensors(c, full);
  for (const m of modules) delete hf[`${hfModuleName(c, m)}.weight`];
  const records: Record<string, TensorData> = Object.fromEntries(Object.entries(hf).map(([k, t]) => [k, { dtype: 'F32', shape: t.shape, data: t.data } as TensorData]));
  for (const m of modules) {
    const inn = shapes[`${m}.weight`]![0]!;
    if (!isFusedQkv(c, m)) Object.assign(records, quantizedFileRecords(params, m, inn, hfModuleName(c, m)));
    else if (m.endsWith('.q_proj')) {
      const h = m.slice(0, -'.q_proj'.length);
      Object.assign(records, fuseQkv(QKV.map((p) => quantizedFileRecords(params, `${h}.${p}`, inn, 'x')), hfModuleName(c, m), c.n_embd, params[`${m}.weight_scale`] ? 8 : 4));
    }
  }
  return records;
}

/**
 * In-memory params of a quantized checkpoint from its file records: packed modules checked against
 * config.json and the quantization_config, everything else through the float mapping (which also rejects
 * unexpected tensors).
 */
export function readQuantizedModel(file: { tensors: Record<string, TensorData>; path: string }, c: ModelConfig, q: QuantizationConfig): Params {
  const { path } = file;
  const records = new Map(Object.entries(file.tensors));
  const take = (name: string): TensorData | undefined => {
    const t = records.get(name);
    records.delete(name);
    return t;
  };
  const shapes = paramShapes(c);
  const params: Params = {};
  const quantized: string[] = [];
  try {
    for (const [name, shape] of Object.entries(shapes)) {
      if (!isLinearWeight(name) || name === 'lm_head.weight') continue;
      const m = name.slice(0, -'.weight'.length), f = hfModuleName(c, m);
      const [inn, out] = shape as [number, number];
      if (isFusedQkv(c, m)) {
        if (!m.endsWith('.q_proj')) continue; // handled with q
        const stored = q.bits === 4 ? records.has(`${f}.qweight`) : records.get(`${f}.weight`)?.dtype === 'I8';
        if (!stored) continue;
        const parts = splitQkv(take, f, out, inn, q, path);
        const h = m.slice(0, -'.q_proj'.length);
        QKV.forEach((p, k) => {
          const part = parts[k]!;
          Object.assign(params, loadQuantizedModule(`${h}.${p}`, f, inn, out, q, (n) => part.get(n), path));
          quantized.push(`${h}.${p}`);
        });
      } else {
        const stored = q.bits === 4 ? records.has(`${f}.qweight`) : records.get(`${f}.weight`)?.dtype === 'I8';
        if (!stored) continue;
        Object.assign(params, loadQuantizedModule(m, f, inn, out, q, take, path));
        quantized.push(m);
      }
      const fs = fileWeightShape(c, m, inn, out);
      records.set(`${f}.weight`, { dtype: 'F32', shape: fs, data: new Float32Array(fs[0]! * fs[1]!) }); // stand-in for the float mapping
    }
    if (!quantized.length) throw new Error(`${path}: config.json has a quantization_config but no module is stored quantized`);
    const host = fromFileTensors(c, Object.fromEntries(records), path);
    for (const m of quantized) delete host[`${m}.weight`];
    for (const [k, t] of Object.entries(host)) params[k] = tf.tensor(t.data, t.shape, 'float32');
  } catch (err) {
    for (const t of Object.values(params)) t.dispose();
    throw err;
  }
  return params;
}
