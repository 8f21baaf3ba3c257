/**
 * LoRA (Hu et al., 2021): W x + (α/r)·B A x on chosen projections, with A random and B zero so the
 * adapted model starts exactly at the base model. In our param map an adapter is two extra entries per
 * projection, `<module>.lora_A` [in, r] and `<module>.lora_B` [r, out], which `linear` in gpt.ts picks up.
 * On disk it is PEFT's layout: adapter_config.json + adapter_model.safetensors with
 * `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r].
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readJson, writeJson } from '../checkpoint/manifest.js';
import { type LoadedCheckpoint, disposeParams, loadCheckpoint } from '../checkpoint/model.js';
import { readSafetensors, toFloat32, writeSafetensors } from '../checkpoint/safetensors.js';
import { Rng } from '../util/rng.js';
import type { ModelConfig, Params } from './gpt.js';
import { paramShapes } from './gpt.js';

export interface LoraConfig {
  r: number;
  alpha: number;
  dropout: number;
  /** Projection names (PEFT style): q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; short q,k,v,o also accepted. */
  target_modules: string[];
}

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';
const PEFT_PREFIX = 'base_model.model.';
const SHORT_NAMES: Record<string, string> = { q: 'q_proj', k: 'k_proj', v: 'v_proj', o: 'o_proj', gate: 'gate_proj', up: 'up_proj', down: 'down_proj' };

export function loraScale(c: LoraConfig): number {
  return c.alpha / c.r;
}

/** Module names (e.g. h.0.attn.q_proj) of the model that the adapter targets. */
export function targetModules(model: ModelConfig, c: LoraConfig): string[] {
  const wanted = new Set(c.target_modules.map((m) => SHORT_NAMES[m] ?? m));
  const modules = Object.keys(paramShapes(model))
    .filter((n) => n.endsWith('.weight'))
    .map((n) => n.slice(0, -'.weight'.length))
    .filter((m) => wanted.has(m.split('.').pop()!));
  const found = new Set(modules.map((m) => m.split('.').pop()!));
  const missing = [...wanted].filter((w) => !found.has(w));
  if (missing.length) throw new Error(`target_modules: ${missing.join(', ')} not in this ${model.arch} model (it has ${[...new Set(Object.keys(paramShapes(model)).filter((n) => n.includes('_proj')).map((n) => n.split('.').at(-2)))].join(', ')})`);
  return modules;
}

/** Fresh adapter: A ~ U(-1/√in, 1/√in) (PEFT's kaiming-uniform bound), B = 0. */
export function initLora(model: ModelConfig, c: LoraConfig, seed: number): Params {
  const shapes = paramShapes(model);
  const rng = new Rng(seed);
  const out: Params = {};
  for (const m of targetModules(model, c)) {
    const [nin, nout] = shapes[`${m}.weight`] as [number, number];
    const a = new Float32Array(nin * c.r);
    const bound = 1 / Math.sqrt(nin);
    for (let i = 0; i < a.length; i++) a[i] = (2 * rng.nextFloat() - 1) * bound;
    out[`${m}.lora_A`] = tf.tensor2d(a, [nin, c.r]);
    out[`${m}.lora_B`] = tf.zeros([c.r, nout]);
  }
  return out;
}

export function saveAdapter(dir: string, lora: Params, c: LoraConfig, baseModel: string): void {
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const [name, t] of Object.entries(lora)) {
    const peft = PEFT_PREFIX + name.replace(/\.lora_([AB])$/, '.lora_$1.weight');
    const stored = tf.tidy(() => tf.transpose(t)); // ours [in, r] / [r, out] → PEFT [r, in] / [out, r]
    tensors[peft] = { dtype: 'F32', shape: stored.shape.slice(), data: stored.dataSync() as Float32Array };
    stored.dispose();
  }
  writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), tensors, { format: 'pt' });
  writeJson(join(dir, ADAPTER_CONFIG_FILE), {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    r: c.r,
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    target_modules: c.target_modules.map((m) => SHORT_NAMES[m] ?? m),
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    base_model_name_or_path: baseModel,
  });
}

export function loadAdapter(dir: string): { lora: Params; config: LoraConfig; baseModel: string } {
  const cfgPath = join(dir, ADAPTER_CONFIG_FILE);
  if (!existsSync(cfgPath)) throw new Error(`${cfgPath}: not found (is ${dir} a LoRA adapter directory?)`);
  const raw = readJson(cfgPath, 'adapter config') as Record<string, unknown>;
  if (raw.peft_type !== 'LORA' || typeof raw.r !== 'number' || typeof raw.lora_alpha !== 'number') {
    throw new Error(`${cfgPath}: expected a PEFT LoRA config with peft_type "LORA", r and lora_alpha`);
  }
  const config: LoraConfig = { r: raw.r, alpha: raw.lora_alpha, dropout: Number(raw.lora_dropout ?? 0), target_modules: raw.target_modules as string[] };
  const { tensors } = readSafetensors(join(dir, ADAPTER_WEIGHTS_FILE));
  const lora: Params = {};
  for (const [peft, t] of Object.entries(tensors)) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(peft);
    if (!m) throw new Error(`${join(dir, ADAPTER_WEIGHTS_FILE)}: unexpected tensor '${peft}'`);
    lora[`${m[1]}.lora_${m[2]}`] = tf.tidy(() => tf.transpose(tf.tensor(toFloat32(t), t.shape)));
  }
  return { lora, config, baseModel: String(raw.base_model_name_or_path ?? '') };
}

/** Every adapted module must exist in the base model. */
export function checkAdapterTargets(base: Params, lora: Params, adapterDir: string, baseDir = 'the base model'): void {
  for (const name of Object.keys(lora)) {
    const module = name.replace(/\.lora_[AB]$/, '');
    if (!base[`${module}.weight`] && !base[`${module}.qweight`]) throw new Error(`${adapterDir}: adapter targets '${module}', which ${baseDir} does not have`);
  }
}

/** Base params + adapter entries, ready for forward(..., { loraScale: scale }). */
export function applyAdapter(base: Params, dir: string): { params: Params; scale: number; dispose(): void } {
  const { lora, config } = loadAdapter(dir);
  checkAdapterTargets(base, lora, dir);
  return { params: { ...base, ...lora }, scale: loraScale(config), dispose: () => Object.values(lora).forEach((t) => t.dispose()) };
}

/** W' = W + scale·A@B for every adapted module: a plain model with the adapter folded in. */
export function mergeAdapter(base: Params, lora: Params, scale: number): Params {
  const merged: Params = {};
  for (const [name, w] of Object.entries(base)) {
    const module = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : undefined;
    const A = module && lora[`${module}.lora_A`], B = module && lora[`${module}.lora_B`];
    merged[name] = A && B ? tf.tidy(() => tf.add(w, tf.mul(tf.matMul(A, B), scale))) : tf.clone(w);
  }
  return merged;
}

/**
 * What generate (and later eval and serve) load: a full checkpoint, optionally with an adapter on top.
 * `dir` may itself be a LoRA output directory; its base comes from adapter_config.json.
 */
export function loadForInference(dir: string, adapterDir?: string): { model: LoadedCheckpoint; scale?: number; dispose(): void } {
  let baseDir = dir;
  if (!existsSync(join(dir, 'model.safetensors')) && existsSync(join(dir, ADAPTER_CONFIG_FILE))) {
    if (adapterDir) throw new Error(`${dir}: is an adapter directory; pass its base as the checkpoint to use --adapter ${adapterDir}`);
    adapterDir = dir;
    baseDir = loadAdapter(dir).baseModel;
    if (!baseDir) throw new Error(`${join(dir, ADAPTER_CONFIG_FILE)}: no base_model_name_or_path to load the base model from`);
  }
  const model = loadCheckpoint(baseDir);
  if (!adapterDir) return { model, dispose: () => disposeParams(model.params) };
  const adapter = applyAdapter(model.params, adapterDir);
  return {
    model: { ...model, params: adapter.params },
    scale: adapter.scale,
    dispose: () => {
      adapter.dispose();
      disposeParams(model.params);
    },
  };
}
