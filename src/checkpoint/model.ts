/**
 * The one checkpoint reader/writer. A checkpoint directory holds:
 *   config.json        Hugging Face config for the architecture + the project's fields (hf-names.ts)
 *   generation_config.json  special ids for HF generate (eos includes <|im_end|> where the vocabulary has it)
 *   model.safetensors  weights, F32, with LlamaForCausalLM / GPT2LMHeadModel names and orientation (hf-names.ts);
 *                      reading also takes sharded files (model.safetensors.index.json), F16/BF16 and the legacy layout
 *   tokenizer.json (+ tokenizer_config.json)
 *   manifest.json      stage, resolved config, parent + its hash, metrics, versions, file hashes
 *   trainer_state.json + optimizer.safetensors   when a trainer wrote it (for resume)
 *   metrics.jsonl      the training log so far
 * Writes go to a temp dir that is renamed into place, so a crash never leaves half a checkpoint.
 */
import * as tf from '@tensorflow/tfjs-core';
import { copyFileSync, existsSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { activeBackend } from '../backend/index.js';
import type { ModelConfig } from '../model/gpt.js';
import { IM_END, Tokenizer } from '../tokenizer/index.js';
import { sha256File, writeDirAtomic } from './dir.js';
import { type OutputOptions, closeOutputDir, isOutputOpen, openOutputDir } from './output.js';
import { assertFinite, prepareToLoad } from './verify.js';
import { type Manifest, type TrainerState, createManifest, readJson, readManifest, readTrainerState, writeJson, writeManifest, writeTrainerState } from './manifest.js';
import { type HostTensor, fromFileTensors, hfConfig, hfGenerationConfig, modelConfigFromJson, toHfTensors } from './hf-names.js';
import { type TensorData, readSafetensors, toFloat32, writeSafetensors } from './safetensors.js';
import { floatParams, quantizedModelRecords, readQuantizationConfig, readQuantizedModel } from '../quant/checkpoint.js';
import { type QuantizationConfig, quantizedModules } from '../quant/tensors.js';

export const MODEL_FILE = 'model.safetensors';
export const MODEL_INDEX_FILE = 'model.safetensors.index.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const CONFIG_FILE = 'config.json';
export const GENERATION_CONFIG_FILE = 'generation_config.json';
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
  /** Present when a trainer saves: makes the checkpoint resumable. metricsText: the run's metrics.jsonl so far. */
  trainer?: { state: TrainerState; optimizer: Record<string, tf.Tensor>; metricsText?: string; metricsLog?: string };
  /** Replace a checkpoint already in `dir` when this process has not opened it (see output.ts). */
  overwrite?: boolean;
  /** Content identity of what the run read (checked when a run resumes). */
  inputs?: Record<string, string>;
  /** Extra files (e.g. an adapter) written into the temp dir before the manifest is made. */
  extra?: (tmpDir: string) => void | Promise<void>;
  /** Only write these params (e.g. LoRA saves adapters via `extra` and skips the base). */
  skipModel?: boolean;
  /**
   * Task heads stored beside the transformer, already in Hugging Face's [out, in] layout (e.g. a reward
   * model's `score.weight` [1, n_embd], as *ForSequenceClassification); config.json then names that class.
   */
  heads?: Record<string, tf.Tensor>;
  /** Params hold packed quantized modules (src/quant/tensors.ts): written as config.json's quantization_config. */
  quantization?: QuantizationConfig;
}

/** Heads a checkpoint may carry besides the transformer: name → shape. */
export function headShapes(c: ModelConfig): Record<string, number[]> {
  return { 'score.weight': [1, c.n_embd] };
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

/**
 * config.json of a checkpoint: HF's fields for the architecture (special ids from the tokenizer) + ours. With a
 * `score.weight` head it is a reward model: HF's *ForSequenceClassification with one label.
 */
export function configJson(c: ModelConfig, tokenizer: Tokenizer, heads: readonly string[] = []): Record<string, unknown> {
  const json = hfConfig(c, { bos: tokenizer.bosId, eos: tokenizer.eosId, pad: tokenizer.padId });
  if (!heads.includes('score.weight')) return json;
  return { ...json, architectures: [`${c.arch === 'llama' ? 'Llama' : 'GPT2'}ForSequenceClassification`], num_labels: 1 };
}

export async function saveCheckpoint(dir: string, o: SaveOptions): Promise<void> {
  // A writer that did not open the directory (import, merge, a one-shot stage) gets the same policy.
  if (!isOutputOpen(dir)) {
    openOutputDir(dir, { overwrite: o.overwrite });
    try {
      return await saveCheckpoint(dir, o);
    } finally {
      closeOutputDir(dir);
    }
  }
  const weights = o.skipModel ? undefined : { ...(await modelRecords(o)), ...(await toTensorData(o.heads ?? {})) };
  const optimizer = o.trainer ? await toTensorData(o.trainer.optimizer) : undefined;
  for (const [what, tensors] of [['weights', weights], ['optimizer state', optimizer]] as const) {
    for (const [name, t] of Object.entries(tensors ?? {})) assertFinite(`${dir}: not saving ${what}`, name, t.data as Float32Array);
  }
  const expectedBytes = [weights, optimizer].reduce((n, ts) => n + Object.values(ts ?? {}).reduce((m, t) => m + t.data.byteLength, 0), 0);
  const parent = o.parentDir ? { path: o.parentDir, sha256: existsSync(join(o.parentDir, 'manifest.json')) ? await sha256File(join(o.parentDir, 'manifest.json')) : '' } : null;
  await writeDirAtomic(dir, async (tmp) => {
    const files = [CONFIG_FILE];
    writeJson(join(tmp, CONFIG_FILE), { ...configJson(o.config, o.tokenizer, Object.keys(o.heads ?? {})), ...(o.quantization ? { quantization_config: o.quantization } : {}) });
    const imEnd = o.tokenizer.tokenToId(IM_END);
    writeJson(join(tmp, GENERATION_CONFIG_FILE), hfGenerationConfig({ bos: o.tokenizer.bosId, eos: o.tokenizer.eosId, pad: o.tokenizer.padId, stop: imEnd === undefined ? [] : [imEnd] }));
    files.push(GENERATION_CONFIG_FILE);
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
      if (o.trainer.metricsText !== undefined) writeFileSync(join(tmp, METRICS_FILE), o.trainer.metricsText);
      else if (o.trainer.metricsLog && existsSync(o.trainer.metricsLog)) copyFileSync(o.trainer.metricsLog, join(tmp, METRICS_FILE));
    }
    if (o.extra) await o.extra(tmp);
    const manifest = await createManifest(tmp, {
      stage: o.stage,
      parent,
      config: o.stageConfig,
      metrics: o.metrics ?? {},
      versions: versions(),
      ...(o.inputs ? { inputs: o.inputs } : {}),
    }, [...files, ...extraFiles(tmp, files)]);
    writeManifest(tmp, manifest);
  }, { expectedBytes });
}

/** model.safetensors records: float tensors as [out, in] linear weights, quantized modules as src/quant/tensors.ts writes them. */
async function modelRecords(o: SaveOptions): Promise<Record<string, TensorData>> {
  if (!quantizedModules(o.params).length) return modelTensorData(o.config, o.params);
  if (!o.quantization) throw new Error('saveCheckpoint: params hold quantized modules but no quantization config was given');
  return quantizedModelRecords(o.config, o.params, await toHost(floatParams(o.params)));
}

function extraFiles(tmp: string, known: string[]): string[] {
  return ['adapter_config.json', 'adapter_model.safetensors', 'value_head.safetensors', 'ref_logps.safetensors'].filter((f) => !known.includes(f) && existsSync(join(tmp, f)));
}


export interface LoadedCheckpoint {
  dir: string;
  config: ModelConfig;
  params: Record<string, tf.Tensor>;
  tokenizer: Tokenizer;
  manifest: Manifest | undefined;
  /** Task heads (e.g. `score.weight`), only when loadCheckpoint was asked for them. */
  heads?: Record<string, tf.Tensor>;
  /** Set when the weights are quantized (params then hold packed modules; see src/quant/tensors.ts). */
  quantization?: QuantizationConfig;
}

/** The model config of a checkpoint dir: the project's fields, or Hugging Face's (hf-names.ts). */
export function readModelConfig(dir: string): ModelConfig {
  prepareToLoad(dir);
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

/**
 * In-memory params of a checkpoint dir (HF or legacy layout, any float dtype), checked against the config.
 * Task heads (headShapes, stored under their HF names) are taken out first: into `heads` when given, else dropped.
 */
export function readModelParams(dir: string, config: ModelConfig, heads?: Record<string, tf.Tensor>): Record<string, tf.Tensor> {
  const { tensors, path } = readModelFiles(dir);
  for (const [name, shape] of Object.entries(headShapes(config))) {
    const t = tensors[name];
    if (!t) continue;
    delete tensors[name];
    if (t.shape.join(',') !== shape.join(',')) throw new Error(`${path}: '${name}' has shape [${t.shape}] but config.json implies [${shape}]`);
    const data = toFloat32(t);
    assertFinite(path, name, data);
    if (heads) heads[name] = tf.tensor(data, t.shape, 'float32');
  }
  const host = fromFileTensors(config, tensors, path);
  for (const [name, t] of Object.entries(host)) assertFinite(path, name, t.data);
  return Object.fromEntries(Object.entries(host).map(([k, t]) => [k, tf.tensor(t.data, t.shape, 'float32')]));
}

/**
 * Load a checkpoint directory: config, weights (checked against the config's shapes), tokenizer. Task
 * heads (headShapes) are returned in `heads` with o.heads, and otherwise dropped: the transformer of a
 * reward model is still a causal LM.
 */
export function loadCheckpoint(dir: string, o: { heads?: boolean } = {}): LoadedCheckpoint {
  prepareToLoad(dir); // before the existence check: a crash mid-save may have left it aside
  if (!existsSync(dir)) throw new Error(`${dir}: checkpoint directory not found`);
  const config = readModelConfig(dir);
  const quantization = readQuantizationConfig(dir);
  const heads: Record<string, tf.Tensor> = {};
  // A quantized checkpoint: packed modules (checked against config.json and quantization_config), the rest as usual.
  const params = quantization ? readQuantizedModel(readModelFiles(dir), config, quantization) : readModelParams(dir, config, o.heads ? heads : undefined);
  const tokenizer = Tokenizer.load(dir);
  const manifest = existsSync(join(dir, 'manifest.json')) ? readManifest(dir) : undefined;
  return { dir, config, params, tokenizer, manifest, ...(o.heads ? { heads } : {}), ...(quantization ? { quantization } : {}) };
}

/**
 * Open out_dir for a run (lock, refuse an existing checkpoint unless overwrite, see output.ts) and
 * return it when `resume` is asked (an error when there is nothing matching to resume), else undefined.
 */
export function resumableDir(outDir: string, resume: boolean | undefined, o: Omit<OutputOptions, 'resume'> = {}): string | undefined {
  return openOutputDir(outDir, { ...o, resume }).resumeDir;
}

/** Every tensor of a safetensors file under its stored name, as written, on the host and checked finite. */
export function readHostFile(path: string): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  for (const [name, t] of Object.entries(readSafetensors(path).tensors)) {
    const data = toFloat32(t);
    assertFinite(path, name, data);
    out[name] = { shape: t.shape.slice(), data };
  }
  return out;
}

/** The same as tensors (e.g. a value head). */
export function readTensorFile(path: string): Record<string, tf.Tensor> {
  return Object.fromEntries(Object.entries(readHostFile(path)).map(([k, t]) => [k, tf.tensor(t.data, t.shape, 'float32')]));
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
  prepareToLoad(dir);
  if (!existsSync(join(dir, 'trainer_state.json'))) return undefined;
  const state = readTrainerState(dir);
  const optimizer = Object.fromEntries(Object.entries(readHostFile(join(dir, OPTIMIZER_FILE))).map(([k, t]) => [k, t.data]));
  return { state, optimizer };
}

export function disposeParams(params: Record<string, tf.Tensor>): void {
  for (const t of Object.values(params)) t.dispose();
}
