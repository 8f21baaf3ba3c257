/**
 * The quantized side of the one checkpoint reader/writer (src/checkpoint/model.ts calls these when
 * config.json has a `quantization_config`, or when the params to save hold packed modules).
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readJson } from '../checkpoint/manifest.js';
import { type TensorData, readSafetensors, toFloat32 } from '../checkpoint/safetensors.js';
import { type ModelConfig, isLinearWeight, paramShapes } from '../model/gpt.js';
import { type Params, type QuantizationConfig, loadQuantizedModule, moduleFileName, parseQuantizationConfig, quantizedFileRecords, quantizedModules } from './tensors.js';

/** config.json's quantization_config, checked; undefined for a float checkpoint. */
export function readQuantizationConfig(dir: string): QuantizationConfig | undefined {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) return undefined;
  const raw = readJson(path, 'model config') as Record<string, unknown>;
  return raw.quantization_config === undefined ? undefined : parseQuantizationConfig(raw.quantization_config, path);
}

/**
 * Read a quantized model.safetensors: quantized modules into packed tensors, everything else as float
 * (linear weights transposed to [in, out]). Checks every tensor against config.json and the
 * quantization_config; extra or missing tensors are errors.
 */
export function readQuantizedModel(path: string, config: ModelConfig, q: QuantizationConfig): Params {
  const { tensors } = readSafetensors(path);
  const records = new Map(Object.entries(tensors));
  const take = (name: string): TensorData | undefined => {
    const t = records.get(name);
    records.delete(name);
    return t;
  };
  const params: Params = {};
  let nQuantized = 0;
  try {
    for (const [name, shape] of Object.entries(paramShapes(config))) {
      if (isLinearWeight(name)) {
        const m = name.slice(0, -'.weight'.length), f = moduleFileName(m);
        const quantized = q.bits === 4 ? records.has(`${f}.qweight`) : records.get(`${f}.weight`)?.dtype === 'I8';
        if (quantized) {
          Object.assign(params, loadQuantizedModule(m, shape[0]!, shape[1]!, q, take, path));
          nQuantized++;
          continue;
        }
      }
      const t = take(name);
      if (!t) throw new Error(`${path}: missing tensor '${name}'`);
      const fileShape = isLinearWeight(name) ? [...shape].reverse() : shape;
      if (t.shape.join(',') !== fileShape.join(',')) throw new Error(`${path}: '${name}' has shape [${t.shape}] but config.json implies [${fileShape}]`);
      let values: Float32Array;
      try {
        values = toFloat32(t);
      } catch {
        throw new Error(`${path}: '${name}' is ${t.dtype}; only quantized modules may hold integers`);
      }
      const x = tf.tensor(values, t.shape, 'float32');
      params[name] = isLinearWeight(name) ? tf.tidy(() => tf.transpose(x)) : x;
      if (params[name] !== x) x.dispose();
    }
    const extra = [...records.keys()];
    if (extra.length) throw new Error(`${path}: unexpected tensor '${extra[0]}' for this config${extra.length > 1 ? ` (and ${extra.length - 1} more)` : ''}`);
    if (nQuantized === 0) throw new Error(`${path}: config.json has a quantization_config but no module is stored quantized`);
  } catch (err) {
    for (const t of Object.values(params)) t.dispose();
    throw err;
  }
  return params;
}

/** File records of every quantized module in a params map (the float rest is the caller's). */
export function quantizedModelRecords(params: Params, config: ModelConfig): { records: Record<string, TensorData>; floatParams: Record<string, tf.Tensor> } {
  const modules = quantizedModules(params);
  const shapes = paramShapes(config);
  const records: Record<string, TensorData> = {};
  for (const m of modules) Object.assign(records, quantizedFileRecords(params, m, shapes[`${m}.weight`]![0]!));
  const owned = new Set(modules.flatMap((m) => ['qweight', 'qzeros', 'scales', 'g_idx', 'weight_scale'].map((s) => `${m}.${s}`)));
  const floatParams = Object.fromEntries(Object.entries(params).filter(([k]) => !owned.has(k)));
  return { records, floatParams };
}
