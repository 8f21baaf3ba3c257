/**
 * `llmctl sft` (full fine-tuning) and `llmctl lora` (adapter-only) on instruction data, both through the
 * shared trainer loop. The loss is next-token cross-entropy counted only where the TARGET token is an
 * assistant token (see src/data/sft.ts for the mask).
 *
 * LoRA: only `<module>.lora_A/B` are tf.Variables; the base weights stay plain tensors, so the optimizer
 * never touches them and the forward runs with `freezeBase` (the kernels skip their weight gradients).
 * Its checkpoint holds adapter_config.json + adapter_model.safetensors (PEFT names), config.json,
 * tokenizer, trainer state and optimizer moments, never the base weights; adapter_config's
 * base_model_name_or_path and the manifest's parent name the base checkpoint.
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type LoadedCheckpoint, disposeParams, loadCheckpoint, loadTrainerState, readModelConfig, resumableDir, saveCheckpoint, toVariables } from '../checkpoint/model.js';
import { closeOutputDir, contentIds } from '../checkpoint/output.js';
import type { SftConfig, SftDataConfig, LoraStageConfig } from '../config/stages.js';
import {
  type SftBatch,
  type SftExample,
  type TokenizeStats,
  assertChatTokenizer,
  disposeSftBatch,
  fixedBatches,
  makeSftBatch,
  packExamples,
  readSftJsonl,
  sftBatchSource,
  tokenizeSft,
} from '../data/sft.js';
import { type ForwardOptions, type ModelConfig, type Params, countParams, paramShapes } from '../model/gpt.js';
import { dequantizeParams } from '../quant/tensors.js';
import { setupChatFormat } from '../model/chat-format.js';
import { type LoraConfig, alignBaseToAdapter, checkAdapterTargets, initLora, loadAdapter, loraScale, mergeAdapter, saveAdapter, targetModules } from '../model/lora.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { InputError } from '../util/errors.js';
import { log } from '../util/log.js';
import { modelLoss } from './losses.js';
import { checkMemory } from './memory.js';
import { tokenBatchToWire } from './parallel.js';
import { type TrainJob, type TrainResult, train } from './trainer.js';

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

export interface SftData {
  train: SftExample[];
  val: SftExample[];
  rows: number;
  skipped: number;
  stats: TokenizeStats;
  /** Rows after packing (equal to stats.examples without packing). */
  trainRows: number;
}

/** Read, validate, render, truncate (and pack) the SFT data for a model of context n_ctx. */
export function loadSftData(d: SftDataConfig, tokenizer: Tokenizer, nCtx: number, where: string): SftData {
  assertChatTokenizer(tokenizer, where);
  const read = readSftJsonl(d.path, { format: d.format, skipInvalid: d.skip_invalid });
  if (read.skipped) log().warn({ skipped: read.skipped, first: read.skippedReasons }, `skipped ${read.skipped} invalid rows of ${d.path}`);
  const rows = d.max_rows ? read.rows.slice(0, d.max_rows) : read.rows;
  const maxLen = nCtx + 1; // n_ctx inputs, n_ctx targets
  const { examples, stats } = tokenizeSft(tokenizer, rows, maxLen);
  if (stats.truncated) log().info({ truncated: stats.truncated, of: rows.length, max_tokens: maxLen }, `truncated ${stats.truncated} of ${rows.length} examples to n_ctx + 1 = ${maxLen} tokens`);
  if (stats.droppedNoTarget) log().warn({ dropped: stats.droppedNoTarget }, `dropped ${stats.droppedNoTarget} examples with no response token left after truncation`);
  if (examples.length === 0) throw new Error(`${d.path}: no example has a response token within n_ctx + 1 = ${maxLen} tokens`);
  const nVal = d.val_fraction > 0 ? Math.min(examples.length - 1, Math.max(1, Math.round(examples.length * d.val_fraction))) : 0;
  const trainEx = examples.slice(0, examples.length - nVal);
  const valEx = examples.slice(examples.length - nVal);
  const train = d.packing ? packExamples(trainEx, maxLen) : trainEx;
  const val = d.packing ? packExamples(valEx, maxLen) : valEx;
  log().info({ rows: rows.length, skipped: read.skipped, examples: examples.length, train_rows: train.length, val_rows: val.length, truncated: stats.truncated, target_tokens: stats.targetTokens, packing: d.packing }, 'sft data');
  return { train, val, rows: rows.length, skipped: read.skipped, stats, trainRows: train.length };
}

// ---------------------------------------------------------------------------------------------
// Loss
// ---------------------------------------------------------------------------------------------

/** Masked next-token loss of one batch: mean NLL over positions whose target is a trained token. */
export function sftLoss(params: Params, config: ModelConfig, batch: SftBatch, fwd: ForwardOptions = {}): tf.Scalar {
  return modelLoss(params, config, batch, fwd);
}

/** Token-weighted mean masked loss over fixed batches of examples (no dropout). */
export function sftEvalLoss(params: Params, config: ModelConfig, examples: readonly SftExample[], batchSize: number, maxBatches: number, padId: number, fwd: ForwardOptions = {}): number {
  let sum = 0, count = 0;
  for (const group of fixedBatches(examples, batchSize, maxBatches)) {
    const b = makeSftBatch(group, padId);
    const l = sftLoss(params, config, b, { ...fwd, training: false });
    sum += l.dataSync()[0]! * b.trainTokens;
    count += b.trainTokens;
    l.dispose();
    disposeSftBatch(b);
  }
  return count > 0 ? sum / count : NaN;
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

export interface FinetuneOptions {
  /** Continue from the trainer state saved in out_dir. */
  resume?: boolean;
  /** Replace a checkpoint already in out_dir. */
  overwrite?: boolean;
  /** Skip the memory estimate check. */
  force?: boolean;
  quiet?: boolean;
  /** Called after every optimizer step (tests watch memory here). */
  onStep?: TrainJob<SftBatch>['onStep'];
  /** Called once after training, before the tensors are freed, with every tensor the forward read (base + adapter). */
  inspect?(params: Params): void;
}

export interface FinetuneResult extends TrainResult {
  config: ModelConfig;
  /** Parameters the optimizer updates. */
  trainableParams: number;
  /** Parameters of the base model. */
  baseParams: number;
  data: Omit<SftData, 'train' | 'val'>;
}

function evaluator(data: SftData, params: () => Params, config: ModelConfig, cfg: SftConfig | LoraStageConfig, padId: number, fwd: ForwardOptions) {
  if (data.val.length === 0) return undefined;
  return () => {
    const val_loss = sftEvalLoss(params(), config, data.val, cfg.train.batch_size, cfg.train.eval_batches, padId, fwd);
    return { val_loss, val_ppl: Math.exp(val_loss) };
  };
}

/**
 * Lock out_dir and apply the overwrite/resume policy (a resume must use the same config, data file and
 * base checkpoint, and any `more.files`), run, and release out_dir. Every training stage runs through it.
 */
export async function withOutputDir<R>(
  cfg: { out_dir: string; base: string; data: { path: string } },
  o: { resume?: boolean; overwrite?: boolean },
  run: (resumeDir: string | undefined, inputs: Record<string, string>) => Promise<R>,
  more: { config?: unknown; files?: Record<string, string> } = {},
): Promise<R> {
  const inputs = contentIds({ data: cfg.data.path, base: join(cfg.base, 'manifest.json'), ...more.files });
  // `config` is what the stage writes as the manifest's config (the default: the stage config itself).
  const resumeDir = resumableDir(cfg.out_dir, o.resume, { overwrite: o.overwrite, config: more.config ?? cfg, inputs });
  try {
    return await run(resumeDir, inputs);
  } finally {
    closeOutputDir(cfg.out_dir);
  }
}

/** Full fine-tuning: every weight trains; saves a full checkpoint (parent: cfg.base). */
export function sft(cfg: SftConfig, o: FinetuneOptions = {}): Promise<FinetuneResult> {
  return withOutputDir(cfg, o, (resumeDir, inputs) => sftRun(cfg, o, resumeDir, inputs));
}

async function sftRun(cfg: SftConfig, o: FinetuneOptions, resumeDir: string | undefined, inputs: Record<string, string>): Promise<FinetuneResult> {
  const source = resumeDir ?? cfg.base;
  checkMemory(join(source, 'config.json'), readModelConfig(source), cfg.train.batch_size, { training: true, force: o.force });
  const loaded = loadCheckpoint(source);
  // A vocabulary without chat markup gets ChatML tokens and a grown embedding first (TRL's setup_chat_format).
  const ck = setupChatFormat(loaded);
  if (ck.added.length) log().info({ added: ck.added, vocab_size: ck.config.vocab_size }, `added ${ck.added.join(', ')} to the vocabulary (ChatML chat format)`);
  const { config, tokenizer } = ck;
  let data: SftData;
  try {
    if (loaded.quantization) throw new Error(`${loaded.dir}: is quantized (${loaded.quantization.llmctl_method}); full fine-tuning needs float weights — train a LoRA adapter over it instead (QLoRA: llmctl lora with base: ${loaded.dir})`);
    data = loadSftData(cfg.data, tokenizer, config.n_ctx, loaded.dir);
  } catch (err) {
    disposeParams(ck.params);
    throw err;
  }
  const params = toVariables(ck.params);
  const resume = resumeDir ? loadTrainerState(resumeDir) : undefined;
  const padId = tokenizer.padId;
  log().info({ params: countParams(config), base: cfg.base, resume: Boolean(resumeDir) }, 'sft');
  try {
    const result = await train<SftBatch>({
      stage: 'sft',
      outDir: cfg.out_dir,
      params,
      loss: (batch) => sftLoss(params, config, batch, { training: true }),
      parallel: { model: config, forward: { training: true }, toWire: tokenBatchToWire },
      batches: sftBatchSource(data.train, cfg.train.batch_size, padId, cfg.train.seed, (resume?.state.step ?? 0) * cfg.train.grad_accum * cfg.train.workers),
      evaluate: evaluator(data, () => params, config, cfg, padId, {}),
      save: (payload) =>
        saveCheckpoint(cfg.out_dir, { config, params, tokenizer, stage: 'sft', stageConfig: cfg, parentDir: cfg.base, metrics: payload.metrics, trainer: payload, inputs }),
      optim: cfg.optim,
      loop: cfg.train,
      resume,
      quiet: o.quiet,
      onStep: o.onStep,
    });
    o.inspect?.(params);
    const n = countParams(config);
    return { ...result, config, trainableParams: n, baseParams: n, data: summary(data) };
  } finally {
    for (const v of Object.values(params)) v.dispose();
  }
}

function summary(d: SftData): Omit<SftData, 'train' | 'val'> {
  return { rows: d.rows, skipped: d.skipped, stats: d.stats, trainRows: d.trainRows };
}

/** Adapter settings of a LoRA stage config, in lora.ts's shape. */
export function adapterConfig(cfg: LoraStageConfig): LoraConfig {
  return { r: cfg.lora.r, alpha: cfg.lora.alpha, dropout: cfg.lora.dropout, target_modules: [...cfg.lora.target_modules] };
}

/**
 * LoRA: only the adapter trains; the base checkpoint is read, never written. A base without chat markup
 * gets ChatML tokens (setupChatFormat); then its grown embedding (and untied head) train beside the adapter
 * and are saved with it, as PEFT's modules_to_save — the new tokens must learn an embedding.
 */
export function lora(cfg: LoraStageConfig, o: FinetuneOptions = {}): Promise<FinetuneResult & { adapterParams: number; modules: string[] }> {
  return withOutputDir(cfg, o, (resumeDir, inputs) => loraRun(cfg, o, resumeDir, inputs));
}

async function loraRun(cfg: LoraStageConfig, o: FinetuneOptions, resumeDir: string | undefined, inputs: Record<string, string>): Promise<FinetuneResult & { adapterParams: number; modules: string[] }> {
  const baseConfig = readModelConfig(cfg.base);
  const trainable = targetModules(baseConfig, adapterConfig(cfg)).length * cfg.lora.r * 2 * baseConfig.n_embd; // about: r·(in + out) per module
  checkMemory(join(cfg.base, 'config.json'), baseConfig, cfg.train.batch_size, { training: true, trainable, force: o.force });
  const loaded = loadCheckpoint(cfg.base);
  const chat = setupChatFormat(loaded);
  if (chat.added.length) log().info({ added: chat.added, vocab_size: chat.config.vocab_size }, `added ${chat.added.join(', ')} to the vocabulary (ChatML chat format); the embedding trains with the adapter`);
  const { config, tokenizer } = chat;
  const wholeModules = chat.added.length ? (config.tie_embeddings ? ['wte.weight'] : ['wte.weight', 'lm_head.weight']) : [];
  const base: LoadedCheckpoint = { ...loaded, config, tokenizer, params: Object.fromEntries(Object.entries(chat.params).filter(([k]) => !wholeModules.includes(k))) };
  const acfg = adapterConfig(cfg);
  let data: SftData, modules: string[], initial: Params;
  try {
    modules = targetModules(config, acfg);
    data = loadSftData(cfg.data, tokenizer, config.n_ctx, loaded.dir);
    if (resumeDir) {
      const saved = loadAdapter(resumeDir, config);
      initial = { ...saved.lora, ...saved.heads }; // a head (a reward adapter) is a mismatch below, and freed
      const want = new Set([...modules.flatMap((m) => [`${m}.lora_A`, `${m}.lora_B`]), ...wholeModules]);
      const got = Object.keys(initial);
      if (saved.config.r !== acfg.r || got.length !== want.size || got.some((k) => !want.has(k))) {
        disposeParams(initial);
        throw new Error(`${resumeDir}: the saved adapter (r=${saved.config.r}, ${got.length / 2} modules) does not match lora settings in the config (r=${acfg.r}, ${modules.length} modules); cannot resume`);
      }
      for (const k of wholeModules) chat.params[k]!.dispose();
    } else {
      initial = initLora(config, acfg, cfg.train.seed);
      for (const k of wholeModules) initial[k] = chat.params[k]!;
    }
  } catch (err) {
    disposeParams(chat.params);
    throw err;
  }
  const adapter = toVariables(initial);
  const all: Params = { ...base.params, ...adapter };
  const scale = loraScale(acfg);
  // With a trainable embedding the tied head needs its weight gradient: run the plain kernels then.
  const fwd: ForwardOptions = { loraScale: scale, loraDropout: acfg.dropout, freezeBase: wholeModules.length === 0 };
  const resume = resumeDir ? loadTrainerState(resumeDir) : undefined;
  const padId = tokenizer.padId;
  const adapterParams = Object.values(adapter).reduce((n, v) => n + v.size, 0);
  const baseParams = countParams(config);
  log().info({ base: cfg.base, base_params: baseParams, adapter_params: adapterParams, modules: modules.length, r: acfg.r, alpha: acfg.alpha, resume: Boolean(resumeDir) }, 'lora');
  try {
    const result = await train<SftBatch>({
      stage: 'lora',
      outDir: cfg.out_dir,
      params: adapter,
      loss: (batch) => sftLoss(all, config, batch, { ...fwd, training: true }),
      parallel: { model: config, forward: { ...fwd, training: true }, frozen: base.params, toWire: tokenBatchToWire },
      batches: sftBatchSource(data.train, cfg.train.batch_size, padId, cfg.train.seed, (resume?.state.step ?? 0) * cfg.train.grad_accum * cfg.train.workers),
      evaluate: evaluator(data, () => all, config, cfg, padId, fwd),
      save: (payload) =>
        saveCheckpoint(cfg.out_dir, {
          config,
          params: {},
          skipModel: true,
          extra: (tmp) => saveAdapter(tmp, adapter, acfg, cfg.base, config),
          tokenizer,
          stage: 'lora',
          stageConfig: cfg,
          parentDir: cfg.base,
          metrics: payload.metrics,
          trainer: payload,
          inputs,
        }),
      optim: cfg.optim,
      loop: cfg.train,
      resume,
      quiet: o.quiet,
      onStep: o.onStep,
    });
    o.inspect?.(all);
    return { ...result, config, trainableParams: adapterParams, baseParams, adapterParams, modules, data: summary(data) };
  } finally {
    for (const v of Object.values(adapter)) v.dispose();
    disposeParams(base.params);
  }
}

/** Fold an adapter into its base: writes a plain full checkpoint (stage lora-merge, parent = base). */
export async function mergeLora(o: { base?: string; adapter: string; out: string; overwrite?: boolean }): Promise<{ base: string; config: ModelConfig; modules: number }> {
  // The adapter's own config.json (written by the lora stage) describes it best; a bare PEFT dir uses --base's.
  const ownConfig = existsSync(join(o.adapter, 'config.json'));
  // A reward adapter's head (modules_to_save score.weight) is kept: the merge is then a full reward model.
  const { lora: adapterParams, config: acfg, baseModel, heads } = loadAdapter(o.adapter, !ownConfig && o.base ? readModelConfig(o.base) : undefined);
  const baseDir = o.base ?? baseModel;
  if (!baseDir) {
    disposeParams({ ...adapterParams, ...heads });
    throw new Error(`${join(o.adapter, 'adapter_config.json')}: no base_model_name_or_path; pass --base`);
  }
  if (!o.overwrite && [baseDir, o.adapter].some((d) => resolve(d) === resolve(o.out))) {
    disposeParams({ ...adapterParams, ...heads });
    throw new InputError(`--out ${o.out}: is the ${resolve(o.out) === resolve(baseDir) ? 'base checkpoint' : 'adapter'} being merged; choose another directory (or pass --overwrite to replace it)`);
  }
  let ck: LoadedCheckpoint;
  try {
    ck = alignBaseToAdapter(loadCheckpoint(baseDir), o.adapter);
  } catch (err) {
    disposeParams({ ...adapterParams, ...heads });
    throw err;
  }
  try {
    checkAdapterTargets(ck.params, adapterParams, o.adapter, `the base model ${baseDir}`);
    // A quantized base (QLoRA) merges into its dequantized weights: the result is a float checkpoint.
    const base = ck.quantization ? dequantizeParams(ck.params, paramShapes(ck.config)) : ck.params;
    const merged = mergeAdapter(base, adapterParams, loraScale(acfg));
    if (base !== ck.params) disposeParams(base);
    try {
      await saveCheckpoint(o.out, {
        config: ck.config,
        params: merged,
        heads,
        tokenizer: ck.tokenizer,
        stage: 'lora-merge',
        stageConfig: { base: baseDir, adapter: o.adapter, lora: acfg },
        parentDir: baseDir,
        overwrite: o.overwrite,
      });
    } finally {
      disposeParams(merged);
    }
    return { base: baseDir, config: ck.config, modules: Object.keys(adapterParams).filter((k) => k.endsWith('.lora_A')).length };
  } finally {
    disposeParams(ck.params);
    disposeParams({ ...adapterParams, ...heads });
  }
}
