/**
 * The one checkpoint reader/writer. A checkpoint directory holds:
 *   config.json        model architecture (our fields + Hugging Face aliases for other readers)
 *   model.safetensors  weights, F32; linear weights stored [out, in] like torch.nn.Linear
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
import { type ModelConfig, isLinearWeight, paramShapes, resolveModelConfig } from '../model/gpt.js';
import { Tokenizer } from '../tokenizer/index.js';
import { log } from '../util/log.js';
import { sha256File, writeDirAtomic } from './dir.js';
import { type Manifest, type TrainerState, createManifest, readJson, readManifest, readTrainerState, writeJson, writeManifest, writeTrainerState } from './manifest.js';
import { type TensorData, readSafetensors, toFloat32, writeSafetensors } from './safetensors.js';
import { quantizedModelRecords, readQuantizationConfig, readQuantizedModel } from '../quant/checkpoint.js';
import type { QuantizationConfig } from '../quant/tensors.js';

export const MODEL_FILE = 'model.safetensors';
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

/** Convert a tensor map to safetensors records (async reads, so the event loop and SIGINT stay live). */
export async function toTensorData(tensors: Record<string, tf.Tensor>, transposeLinear: boolean): Promise<Record<string, TensorData>> {
  const out: Record<string, TensorData> = {};
  for (const [name, t] of Object.entries(tensors)) {
    const stored = transposeLinear && isLinearWeight(name) ? tf.transpose(t) : t;
    out[name] = { dtype: 'F32', shape: stored.shape.slice(), data: (await stored.data()) as Float32Array };
    if (stored !== t) stored.dispose();
  }
  return out;
}

export function configJson(c: ModelConfig): Record<string, unknown> {
  const hd = c.n_embd / c.n_head;
  return {
    ...c,
    // Hugging Face-style aliases, so tools that sniff config.json see familiar fields.
    model_type: c.arch === 'llama' ? 'llama' : 'gpt2',
    architectures: [c.arch === 'llama' ? 'LlamaForCausalLM' : 'GPT2LMHeadModel'],
    hidden_size: c.n_embd,
    num_hidden_layers: c.n_layer,
    num_attention_heads: c.n_head,
    num_key_value_heads: c.n_kv_head,
    head_dim: hd,
    intermediate_size: c.n_inner,
    max_position_embeddings: c.n_ctx,
    rms_norm_eps: c.norm_eps,
    tie_word_embeddings: c.tie_embeddings,
    torch_dtype: 'float32',
    llmctl_weight_layout: 'linear weights [out, in] as torch.nn.Linear; names per src/model/gpt.ts',
  };
}

export async function saveCheckpoint(dir: string, o: SaveOptions): Promise<void> {
  const weights = o.skipModel ? undefined : await modelRecords(o);
  const optimizer = o.trainer ? await toTensorData(o.trainer.optimizer, false) : undefined;
  const parent = o.parentDir ? { path: o.parentDir, sha256: existsSync(join(o.parentDir, 'manifest.json')) ? await sha256File(join(o.parentDir, 'manifest.json')) : '' } : null;
  await writeDirAtomic(dir, async (tmp) => {
    const files = [CONFIG_FILE];
    writeJson(join(tmp, CONFIG_FILE), { ...configJson(o.config), ...(o.quantization ? { quantization_config: o.quantization } : {}) });
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
  const { records, floatParams } = quantizedModelRecords(o.params, o.config);
  if (Object.keys(records).length && !o.quantization) throw new Error('saveCheckpoint: params hold quantized modules but no quantization config was given');
  return { ...(await toTensorData(floatParams, true)), ...records };
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

export function readModelConfig(dir: string): ModelConfig {
  const raw = readJson(join(dir, CONFIG_FILE), 'model config') as Partial<ModelConfig> & Record<string, unknown>;
  for (const k of ['vocab_size', 'n_ctx', 'n_layer', 'n_embd', 'n_head'] as const) {
    if (typeof raw[k] !== 'number') throw new Error(`${join(dir, CONFIG_FILE)}: ${k}: missing or not a number`);
  }
  return resolveModelConfig(raw as ModelConfig);
}

/** Read a safetensors file into tensors, undoing the [out, in] layout of linear weights when asked. */
export function readTensors(path: string, transposeLinear: boolean): Record<string, tf.Tensor> {
  const { tensors } = readSafetensors(path);
  const out: Record<string, tf.Tensor> = {};
  for (const [name, t] of Object.entries(tensors)) {
    const x = tf.tensor(toFloat32(t), t.shape, 'float32');
    out[name] = transposeLinear && isLinearWeight(name) ? tf.tidy(() => tf.transpose(x)) : x;
    if (out[name] !== x) x.dispose();
  }
  return out;
}

/** Load a checkpoint directory: config, weights (checked against the config's shapes), tokenizer. */
export function loadCheckpoint(dir: string): LoadedCheckpoint {
  if (!existsSync(dir)) throw new Error(`${dir}: checkpoint directory not found`);
  const config = readModelConfig(dir);
  const quantization = readQuantizationConfig(dir);
  if (quantization) {
    // The quantized reader checks every tensor against config.json and the quantization_config itself.
    const params = readQuantizedModel(join(dir, MODEL_FILE), config, quantization);
    const manifest = existsSync(join(dir, 'manifest.json')) ? readManifest(dir) : undefined;
    return { dir, config, params, tokenizer: Tokenizer.load(dir), manifest, quantization };
  }
  const params = readTensors(join(dir, MODEL_FILE), true);
  const expected = paramShapes(config);
  for (const [name, shape] of Object.entries(expected)) {
    const t = params[name];
    if (!t) throw new Error(`${join(dir, MODEL_FILE)}: missing tensor '${name}'`);
    if (t.shape.join(',') !== shape.join(',')) throw new Error(`${join(dir, MODEL_FILE)}: '${name}' has shape [${t.shape}] but config.json implies [${shape}]`);
  }
  for (const name of Object.keys(params)) {
    if (!(name in expected)) throw new Error(`${join(dir, MODEL_FILE)}: unexpected tensor '${name}' for this config`);
  }
  const tokenizer = Tokenizer.load(dir);
  const manifest = existsSync(join(dir, 'manifest.json')) ? readManifest(dir) : undefined;
  return { dir, config, params, tokenizer, manifest };
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
