/**
 * LoRA (Hu et al., 2021): W x + (α/r)·B A x on chosen projections, with A random and B zero so the
 * adapted model starts exactly at the base model. In our param map an adapter is two extra entries per
 * projection, `<module>.lora_A` [in, r] and `<module>.lora_B` [r, out], which `linear` in gpt.ts picks up.
 * On disk it is PEFT's layout for the Hugging Face model (key mapping in src/checkpoint/hf-names.ts):
 * adapter_config.json + adapter_model.safetensors with `base_model.model.<HF module>.lora_A.weight` [r, in]
 * and `.lora_B.weight` [out, r] — e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`;
 * GPT-2's q/k/v adapters become one block-diagonal adapter on the fused c_attn.
 * base_model_name_or_path is written absolute (AutoPeftModelForCausalLM resolves it from any working
 * directory); a relative one is read relative to the adapter directory, then to the working directory
 * (adapters written before stored the path as typed).
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { type HostTensor, PEFT_PREFIX, fromPeft, toPeft } from '../checkpoint/hf-names.js';
import { readJson, writeJson } from '../checkpoint/manifest.js';
import { CONFIG_FILE, type LoadedCheckpoint, disposeParams, hostToTensorData, loadCheckpoint, readModelConfig } from '../checkpoint/model.js';
import { readSafetensors, toFloat32, writeSafetensors } from '../checkpoint/safetensors.js';
import { assertFinite, prepareToLoad } from '../checkpoint/verify.js';
import { Rng } from '../util/rng.js';
import { Tokenizer } from '../tokenizer/index.js';
import { resizeVocab } from './chat-format.js';
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

/**
 * Write the adapter in PEFT's layout (hf-names.ts). `heads` (a reward model's `score.weight`, [out, in]) are
 * trained in full beside the adapter, as PEFT's modules_to_save: stored as `base_model.model.score.weight`.
 */
export function saveAdapter(dir: string, lora: Params, c: LoraConfig, baseModel: string, model: ModelConfig, heads: Params = {}): void {
  const host: Record<string, HostTensor> = {};
  for (const [name, t] of Object.entries(lora)) host[name] = { shape: t.shape.slice(), data: t.dataSync() as Float32Array };
  const peft = toPeft(model, host, c.r, c.alpha);
  for (const [name, t] of Object.entries(heads)) peft.tensors[PEFT_PREFIX + name] = { shape: t.shape.slice(), data: t.dataSync() as Float32Array };
  const saved = [...(peft.modules_to_save ?? []), ...Object.keys(heads).map((n) => n.replace(/\.weight$/, ''))];
  writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), hostToTensorData(peft.tensors), { format: 'pt' });
  writeJson(join(dir, ADAPTER_CONFIG_FILE), {
    peft_type: 'LORA',
    task_type: Object.keys(heads).length ? 'SEQ_CLS' : 'CAUSAL_LM',
    r: c.r,
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    target_modules: peft.target_modules,
    rank_pattern: peft.rank_pattern,
    alpha_pattern: peft.alpha_pattern,
    bias: 'none',
    fan_in_fan_out: peft.fan_in_fan_out,
    modules_to_save: saved.length ? saved : null,
    init_lora_weights: true,
    use_rslora: false,
    use_dora: false,
    layers_to_transform: null,
    layers_pattern: null,
    inference_mode: true,
    base_model_name_or_path: resolve(baseModel),
    revision: null,
  });
}

/** The base checkpoint an adapter names: absolute as is; relative → the adapter dir first, then the cwd. */
export function resolveBaseModel(adapterDir: string, stored: string): string {
  if (!stored || isAbsolute(stored)) return stored;
  const beside = resolve(adapterDir, stored);
  return existsSync(beside) ? beside : stored;
}

/** The model config an adapter applies to: given, or config.json beside the adapter, or the base's. */
function adapterModelConfig(dir: string, baseModel: string, model?: ModelConfig): ModelConfig {
  if (model) return model;
  if (existsSync(join(dir, CONFIG_FILE))) return readModelConfig(dir);
  if (baseModel && existsSync(join(baseModel, CONFIG_FILE))) return readModelConfig(baseModel);
  throw new Error(`${join(dir, ADAPTER_CONFIG_FILE)}: cannot find the base model's config.json (base_model_name_or_path ${JSON.stringify(baseModel)})`);
}

/** The base checkpoint an adapter dir names (adapter_config.json only; no tensors are read). */
export function adapterBaseModel(dir: string): string {
  return readAdapterConfig(dir).baseModel;
}

function readAdapterConfig(dir: string): { raw: Record<string, unknown> & { r: number; lora_alpha: number }; baseModel: string; cfgPath: string } {
  prepareToLoad(dir);
  const cfgPath = join(dir, ADAPTER_CONFIG_FILE);
  if (!existsSync(cfgPath)) throw new Error(`${cfgPath}: not found (is ${dir} a LoRA adapter directory?)`);
  const raw = readJson(cfgPath, 'adapter config') as Record<string, unknown>;
  if (raw.peft_type !== 'LORA' || typeof raw.r !== 'number' || typeof raw.lora_alpha !== 'number') {
    throw new Error(`${cfgPath}: expected a PEFT LoRA config with peft_type "LORA", r and lora_alpha`);
  }
  for (const f of ['use_dora', 'use_rslora'] as const) if (raw[f] === true) throw new Error(`${cfgPath}: ${f}: true is not supported`);
  if (raw.bias !== undefined && raw.bias !== 'none') throw new Error(`${cfgPath}: bias: ${JSON.stringify(raw.bias)} is not supported (only "none")`);
  const baseModel = resolveBaseModel(dir, String(raw.base_model_name_or_path ?? ''));
  return { raw: raw as Record<string, unknown> & { r: number; lora_alpha: number }, baseModel, cfgPath };
}

export function loadAdapter(dir: string, model?: ModelConfig): { lora: Params; config: LoraConfig; baseModel: string; heads: Params } {
  const { raw, baseModel } = readAdapterConfig(dir);
  const mc = adapterModelConfig(dir, baseModel, model);
  const path = join(dir, ADAPTER_WEIGHTS_FILE);
  const tensors = readSafetensors(path).tensors;
  // A reward model's head, trained beside the adapter (modules_to_save), is not part of the causal LM.
  const heads: Params = {};
  const score = tensors[`${PEFT_PREFIX}score.weight`];
  if (score) {
    delete tensors[`${PEFT_PREFIX}score.weight`];
    const data = toFloat32(score);
    assertFinite(path, 'score.weight', data);
    heads['score.weight'] = tf.tensor(data, score.shape, 'float32');
  }
  const host = fromPeft(mc, tensors, { r: raw.r, lora_alpha: raw.lora_alpha, rank_pattern: raw.rank_pattern, alpha_pattern: raw.alpha_pattern }, path);
  const lora: Params = {};
  for (const [k, t] of Object.entries(host)) {
    assertFinite(path, k, t.data);
    lora[k] = tf.tensor(t.data, t.shape, 'float32');
  }
  const targets = [...new Set(Object.keys(lora).filter((k) => /\.lora_[AB]$/.test(k)).map((k) => k.replace(/\.lora_[AB]$/, '').split('.').pop()!))];
  const config: LoraConfig = { r: raw.r, alpha: raw.lora_alpha, dropout: Number(raw.lora_dropout ?? 0), target_modules: targets };
  return { lora, config, baseModel, heads };
}

/** Every adapted module must exist in the base model; whole tensors saved with the adapter must fit it. */
export function checkAdapterTargets(base: Params, lora: Params, adapterDir: string, baseDir = 'the base model'): void {
  for (const [name, t] of Object.entries(lora)) {
    if (!/\.lora_[AB]$/.test(name)) {
      const b = base[name];
      if (!b || b.shape.join(',') !== t.shape.join(',')) throw new Error(`${adapterDir}: adapter holds '${name}' [${t.shape}], which ${baseDir} has as [${b?.shape ?? 'nothing'}]`);
      continue;
    }
    const module = name.replace(/\.lora_[AB]$/, '');
    if (!base[`${module}.weight`] && !base[`${module}.qweight`]) throw new Error(`${adapterDir}: adapter targets '${module}', which ${baseDir} does not have`);
  }
}

/**
 * A base checkpoint made to fit an adapter trained after setup_chat_format: when the adapter dir's
 * config.json has a larger vocabulary, the base's embedding (and untied head) grow to it — the rows come
 * from the adapter's saved embedding — and the adapter's tokenizer (with the chat tokens) is used.
 */
export function alignBaseToAdapter(model: LoadedCheckpoint, adapterDir: string): LoadedCheckpoint {
  if (!existsSync(join(adapterDir, CONFIG_FILE)) || !existsSync(join(adapterDir, 'tokenizer.json'))) return model;
  const ac = readModelConfig(adapterDir);
  if (ac.vocab_size === model.config.vocab_size) return model;
  if (ac.vocab_size < model.config.vocab_size) throw new Error(`${join(adapterDir, CONFIG_FILE)}: vocab_size ${ac.vocab_size} is smaller than the base's ${model.config.vocab_size}`);
  const config = { ...model.config, vocab_size: ac.vocab_size };
  return { ...model, config, params: resizeVocab(model.config, model.params, ac.vocab_size), tokenizer: Tokenizer.load(adapterDir) };
}

/** Base params + adapter entries, ready for forward(..., { loraScale: scale }). */
export function applyAdapter(base: Params, dir: string, model?: ModelConfig): { params: Params; scale: number; dispose(): void } {
  const { lora, config, heads } = loadAdapter(dir, model);
  disposeParams(heads); // a reward model's head; generation reads the causal LM only
  checkAdapterTargets(base, lora, dir);
  return { params: { ...base, ...lora }, scale: loraScale(config), dispose: () => Object.values(lora).forEach((t) => t.dispose()) };
}

/** W' = W + scale·A@B for every adapted module: a plain model with the adapter folded in. */
export function mergeAdapter(base: Params, lora: Params, scale: number): Params {
  const merged: Params = {};
  for (const [name, w] of Object.entries(base)) {
    const module = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : undefined;
    const A = module && lora[`${module}.lora_A`], B = module && lora[`${module}.lora_B`];
    merged[name] = lora[name] ? tf.clone(lora[name]!) : A && B ? tf.tidy(() => tf.add(w, tf.mul(tf.matMul(A, B), scale))) : tf.clone(w);
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
    baseDir = adapterBaseModel(dir);
    if (!baseDir) throw new Error(`${join(dir, ADAPTER_CONFIG_FILE)}: no base_model_name_or_path to load the base model from`);
  }
  const loaded = loadCheckpoint(baseDir);
  if (!adapterDir) return { model: loaded, dispose: () => disposeParams(loaded.params) };
  const model = alignBaseToAdapter(loaded, adapterDir);
  const adapter = applyAdapter(model.params, adapterDir, model.config);
  return {
    model: { ...model, params: adapter.params },
    scale: adapter.scale,
    dispose: () => {
      adapter.dispose();
      disposeParams(model.params);
    },
  };
}
