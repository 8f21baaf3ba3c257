/**
 * The one checkpoint reader/writer. A checkpoint directory holds:
 *   config.json        Hugging Face config for the architecture + the project's fields (hf-names.ts)
 *   model.safetensors  weights, F32, with LlamaForCausalLM / GPT2LMHeadModel names and orientation (hf-names.ts);
 *                      reading also takes sharded files (model.safetensors.index.json), F16/BF16 and the legacy layout
 *   tokenizer.json (+ tokenizer_config.json)
 *   manifest.json      stage, resolved config, parent + its hash, metrics, versions, file hashes
 *   trainer_state.json + optimizer.safetensors   when a trainer wrote it (for resume)
 *   metrics.jsonl      the training log so far
 * Writes go to a temp dir that is renamed into place, so a crash never leaves half a checkpoint.
 */
import * as tf from '@tensorflow/tfjs-core';
import { copyFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { activeBackend } from '../backend/index.js';
import type { ModelConfig } from '../model/gpt.js';
import { Tokenizer } from '../tokenizer/index.js';
import { log } from '../util/log.js';
import { sha256File, writeDirAtomic } from './dir.js';
import { type Manifest, type TrainerState, createManifest, readJson, readManifest, readTrainerState, writeJson, writeManifest, writeTrainerState } from './manifest.js';
import { type HostTensor, fromFileTensors, hfConfig, modelConfigFromJson, toHfTensors } from './hf-names.js';
import { type TensorData, readSafetensors, toFloat32, writeSafetensors } from './safetensors.js';
import { floatParams, quantizedModelRecords, readQuantizationConfig, readQuantizedModel } from '../quant/checkpoint.js';
import { type QuantizationConfig, quantizedModules } from '../quant/tensors.js';

export const MODEL_FILE = 'model.safetensors';
export const MODEL_INDEX_FILE = 'model.safetensors.index.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const CONFIG_FILE = 'config.json';
export const METRICS_FILE = 'metrics.jsonl';

const require = createRequire(import.meta.url);
export const LLMCTL_VERSION: string = (require('../../package.json') as { version: string }).version;

export function versions(): Manifest['versions'] {
  return { llmctl: LLMCTL_VERSION, node: process.version, tfjs: tf.version_core, backend: activeBackend()?.name ?? 'none' };
}

export interface SaveOptions {
  config: ModelConfig;
  params: Record<string, tf.Tensor>;
  tokenizer: Tokenizer;
  stage: string;
  stageConfig: unknown;
  parentDir?: string | null;
  metrics?: Record<string, number>;
  /** Present when a trainer saves: makes the checkpoint resumable. */
  trainer?: { state: TrainerState; optimizer: Record<string, tf.Tensor>; metricsLog?: string };
  /** Extra files (e.g. an adapter) written into the temp dir before the manifest is made. */
  extra?: (tmpDir: string) => void | Promise<void>;
  /** Only write these params (e.g. LoRA saves adapters via `extra` and skips the base). */
  skipModel?: boolean;
  /** Params hold packed quantized modules (src/quant/tensors.ts): written as config.json's quantization_config. */
  quantization?: QuantizationConfig;
}

/** Host copies of a tensor map (async reads, so the event loop and SIGINT stay live). */
export async function toHost(tensors: Record<string, tf.Tensor>): Promise<Record<string, HostTensor>> {
  const out: Record<string, HostTensor> = {};
  for (const [name, t] of Object.entries(tensors)) out[name] = { shape: t.shape.slice(), data: (await t.data()) as Float32Array };
  return out;
}

/** F32 safetensors records of host tensors. */
export function hostToTensorData(tensors: Record<string, HostTensor>): Record<string, TensorData> {
  return Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, { dtype: 'F32', shape: t.shape, data: t.data } as TensorData]));
}

/** Convert a tensor map to safetensors records under its in-memory names (optimizer moments). */
export async function toTensorData(tensors: Record<string, tf.Tensor>): Promise<Record<string, TensorData>> {
  return hostToTensorData(await toHost(tensors));
}

/** model.safetensors records for a model: Hugging Face names and orientation (hf-names.ts). */
export async function modelTensorData(c: ModelConfig, params: Record<string, tf.Tensor>): Promise<Record<string, TensorData>> {
  return hostToTensorData(toHfTensors(c, await toHost(params)));
}

/** config.json of a checkpoint: HF's fields for the architecture (special ids from the tokenizer) + ours. */
export function configJson(c: ModelConfig, tokenizer: Tokenizer): Record<string, unknown> {
  return hfConfig(c, { bos: tokenizer.bosId, eos: tokenizer.eosId, pad: tokenizer.padId });
}

export async function saveCheckpoint(dir: string, o: SaveOptions): Promise<void> {
  const weights = o.skipModel ? undefined : await modelRecords(o);
  const optimizer = o.trainer ? await toTensorData(o.trainer.optimizer) : undefined;
  const parent = o.parentDir ? { path: o.parentDir, sha256: existsSync(join(o.parentDir, 'manifest.json')) ? await sha256File(join(o.parentDir, 'manifest.json')) : '' } : null;
  await writeDirAtomic(dir, async (tmp) => {
    const files = [CONFIG_FILE];
    writeJson(join(tmp, CONFIG_FILE), { ...configJson(o.config, o.tokenizer), ...(o.quantization ? { quantization_config: o.quantization } : {}) });
    if (weights) {
      writeSafetensors(join(tmp, MODEL_FILE), weights, { format: 'pt', producer: 'llmctl' });
      files.push(MODEL_FILE);
    }
    o.tokenizer.save(tmp);
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (existsSync(join(tmp, f))) files.push(f);
    if (o.trainer && optimizer) {
      writeSafetensors(join(tmp, OPTIMIZER_FILE), optimizer);
      writeTrainerState(tmp, o.trainer.state);
      files.push(OPTIMIZER_FILE, 'trainer_state.json');
      if (o.trainer.metricsLog && existsSync(o.trainer.metricsLog)) copyFileSync(o.trainer.metricsLog, join(tmp, METRICS_FILE));
    }
    if (o.extra) await o.extra(tmp);
    const manifest = await createManifest(tmp, {
      stage: o.stage,
      parent,
      config: o.stageConfig,
      metrics: o.metrics ?? {},
      versions: versions(),
    }, [...files, ...extraFiles(tmp, files)]);
    writeManifest(tmp, manifest);
  });
}

/** model.safetensors records: float tensors as [out, in] linear weights, quantized modules as src/quant/tensors.ts writes them. */
async function modelRecords(o: SaveOptions): Promise<Record<string, TensorData>> {
  if (!quantizedModules(o.params).length) return modelTensorData(o.config, o.params);
  if (!o.quantization) throw new Error('saveCheckpoint: params hold quantized modules but no quantization config was given');
  return quantizedModelRecords(o.config, o.params, await toHost(floatParams(o.params)));
}

function extraFiles(tmp: string, known: string[]): string[] {
  return ['adapter_config.json', 'adapter_model.safetensors', 'value_head.safetensors'].filter((f) => !known.includes(f) && existsSync(join(tmp, f)));
}


export interface LoadedCheckpoint {
  dir: string;
  config: ModelConfig;
  params: Record<string, tf.Tensor>;
  tokenizer: Tokenizer;
  manifest: Manifest | undefined;
  /** Set when the weights are quantized (params then hold packed modules; see src/quant/tensors.ts). */
  quantization?: QuantizationConfig;
}

/** The model config of a checkpoint dir: the project's fields, or Hugging Face's (hf-names.ts). */
export function readModelConfig(dir: string): ModelConfig {
  const path = join(dir, CONFIG_FILE);
  return modelConfigFromJson(readJson(path, 'model config') as Record<string, unknown>, path);
}

/**
 * Every tensor of a checkpoint's weights as stored: model.safetensors, or the shards a
 * model.safetensors.index.json lists (`path` names the file errors should point at).
 */
export function readModelFiles(dir: string): { tensors: Record<string, TensorData>; path: string } {
  const single = join(dir, MODEL_FILE), index = join(dir, MODEL_INDEX_FILE);
  if (existsSync(single) || !existsSync(index)) return { tensors: readSafetensors(single).tensors, path: single };
  const raw = readJson(index, 'safetensors index') as Record<string, unknown>;
  const map = raw.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new Error(`${index}: weight_map: missing or not an object`);
  const tensors: Record<string, TensorData> = {};
  const shards = new Map<string, Record<string, TensorData>>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\')) throw new Error(`${index}: weight_map.${name}: expected a file name in this directory`);
    let shard = shards.get(file);
    if (!shard) shards.set(file, (shard = readSafetensors(join(dir, file)).tensors));
    const t = shard[name];
    if (!t) throw new Error(`${index}: weight_map.${name}: tensor not found in ${file}`);
    tensors[name] = t;
  }
  for (const [file, shard] of shards) {
    for (const name of Object.keys(shard)) if (!(name in tensors)) throw new Error(`${join(dir, file)}: tensor '${name}' is not in ${MODEL_INDEX_FILE}`);
  }
  return { tensors, path: index };
}

/** In-memory params of a checkpoint dir (HF or legacy layout, any float dtype), checked against the config. */
export function readModelParams(dir: string, config: ModelConfig): Record<string, tf.Tensor> {
  const { tensors, path } = readModelFiles(dir);
  const host = fromFileTensors(config, tensors, path);
  return Object.fromEntries(Object.entries(host).map(([k, t]) => [k, tf.tensor(t.data, t.shape, 'float32')]));
}

/** Load a checkpoint directory: config, weights (checked against the config's shapes), tokenizer. */
export function loadCheckpoint(dir: string): LoadedCheckpoint {
  if (!existsSync(dir)) throw new Error(`${dir}: checkpoint directory not found`);
  const config = readModelConfig(dir);
  const quantization = readQuantizationConfig(dir);
  // A quantized checkpoint: packed modules (checked against config.json and quantization_config), the rest as usual.
  const params = quantization ? readQuantizedModel(readModelFiles(dir), config, quantization) : readModelParams(dir, config);
  const tokenizer = Tokenizer.load(dir);
  const manifest = existsSync(join(dir, 'manifest.json')) ? readManifest(dir) : undefined;
  return { dir, config, params, tokenizer, manifest, ...(quantization ? { quantization } : {}) };
}

/** out_dir when `resume` is asked and out_dir holds a trainer state; otherwise undefined (logged). */
export function resumableDir(outDir: string, resume: boolean | undefined): string | undefined {
  const dir = resume && existsSync(join(outDir, 'trainer_state.json')) ? outDir : undefined;
  if (resume && !dir) log().warn({ out_dir: outDir }, 'nothing to resume (no trainer_state.json): starting fresh');
  return dir;
}

/** Trainable copies of loaded tensors (the tensors are consumed). */
export function toVariables(tensors: Record<string, tf.Tensor>): Record<string, tf.Variable> {
  const out: Record<string, tf.Variable> = {};
  for (const [name, t] of Object.entries(tensors)) {
    out[name] = tf.variable(t, true);
    t.dispose();
  }
  return out;
}

/** Trainer state + optimizer moments, if the checkpoint was written by a trainer. */
export function loadTrainerState(dir: string): { state: TrainerState; optimizer: Record<string, Float32Array> } | undefined {
  if (!existsSync(join(dir, 'trainer_state.json'))) return undefined;
  const state = readTrainerState(dir);
  const { tensors } = readSafetensors(join(dir, OPTIMIZER_FILE));
  const optimizer: Record<string, Float32Array> = {};
  for (const [k, t] of Object.entries(tensors)) optimizer[k] = toFloat32(t);
  return { state, optimizer };
}

export function disposeParams(params: Record<string, tf.Tensor>): void {
  for (const t of Object.values(params)) t.dispose();
}
