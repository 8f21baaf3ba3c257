/** `llmctl pretrain`: next-token prediction on token shards, through the shared trainer loop. */
import * as tf from '@tensorflow/tfjs-core';
import { join } from 'node:path';
import { loadCheckpoint, loadTrainerState, readModelConfig, resumableDir, saveCheckpoint, toVariables } from '../checkpoint/model.js';
import { closeOutputDir, contentIds } from '../checkpoint/output.js';
import type { PretrainConfig } from '../config/stages.js';
import { type LmBatch, type ShardMeta, lmBatchSource, loadSplit, readShardMeta, sampleLmBatch } from '../data/shards.js';
import { type ModelConfig, type Params, countParams, resolveModelConfig } from '../model/gpt.js';
import { initParams } from '../model/init.js';
import { Tokenizer } from '../tokenizer/index.js';
import { log } from '../util/log.js';
import { Rng } from '../util/rng.js';
import { modelLoss } from './losses.js';
import { checkMemory } from './memory.js';
import { tokenBatchToWire } from './parallel.js';
import { type TrainResult, train } from './trainer.js';

/** Mean next-token loss of a model on a batch. */
export function lmLoss(params: Params, config: ModelConfig, batch: LmBatch, training = false): tf.Scalar {
  return modelLoss(params, config, batch, { training });
}

/** Mean loss over `batches` fixed validation batches (same windows every time: a fixed seed). */
export function evalLoss(params: Params, config: ModelConfig, tokens: Uint16Array | Uint32Array, batches: number, batchSize: number, seed: number): number {
  const rng = new Rng(seed);
  let sum = 0;
  for (let i = 0; i < batches; i++) {
    const b = sampleLmBatch(tokens, rng, batchSize, config.n_ctx);
    const l = lmLoss(params, config, b);
    sum += l.dataSync()[0]!;
    l.dispose();
    b.inputs.dispose();
    b.targets.dispose();
  }
  return sum / batches;
}

export interface PretrainOptions {
  /** Continue from the trainer state saved in out_dir. */
  resume?: boolean;
  /** Replace a checkpoint already in out_dir. */
  overwrite?: boolean;
  /** Skip the memory estimate check. */
  force?: boolean;
  quiet?: boolean;
}

export async function pretrain(cfg: PretrainConfig, o: PretrainOptions = {}): Promise<TrainResult & { params: number; config: ModelConfig }> {
  const meta = readShardMeta(cfg.data.dir);
  // What a resume must read again: the same tokens and tokenizer, and the same init_from checkpoint.
  const inputs = contentIds({ data: join(cfg.data.dir, 'meta.json'), tokenizer: join(cfg.data.dir, 'tokenizer.json'), ...(cfg.init_from ? { init_from: join(cfg.init_from, 'manifest.json') } : {}) });
  const resumeDir = resumableDir(cfg.out_dir, o.resume, { overwrite: o.overwrite, config: cfg, inputs });
  try {
    return await run(cfg, o, meta, resumeDir, inputs);
  } finally {
    closeOutputDir(cfg.out_dir);
  }
}

async function run(cfg: PretrainConfig, o: PretrainOptions, meta: ShardMeta, resumeDir: string | undefined, inputs: Record<string, string>): Promise<TrainResult & { params: number; config: ModelConfig }> {
  const tokenizer = Tokenizer.load(cfg.data.dir);
  const sourceDir = resumeDir ?? cfg.init_from;
  const config = sourceDir ? readModelConfig(sourceDir) : resolveModelConfig(cfg.model!);
  if (config.vocab_size < tokenizer.vocabSize) {
    throw new Error(`model.vocab_size: ${config.vocab_size} is smaller than the tokenizer's ${tokenizer.vocabSize} (${cfg.data.dir})`);
  }
  checkMemory(sourceDir ? join(sourceDir, 'config.json') : 'model', config, cfg.train.batch_size, { training: true, force: o.force });
  const trainTokens = loadSplit(cfg.data.dir, 'train');
  const valTokens = meta.splits.val.tokens > 0 ? loadSplit(cfg.data.dir, 'val') : undefined;
  let initial: Params;
  if (sourceDir) {
    initial = loadCheckpoint(sourceDir).params;
  } else {
    initial = initParams(config, cfg.train.seed);
  }
  const params = toVariables(initial);
  log().info({ params: countParams(config), train_tokens: trainTokens.length, val_tokens: valTokens?.length ?? 0, resume: Boolean(resumeDir) }, 'pretrain');

  try {
    const result = await train<LmBatch>({
      stage: 'pretrain',
      outDir: cfg.out_dir,
      params,
      loss: (batch) => lmLoss(params, config, batch, true),
      parallel: { model: config, forward: { training: true }, toWire: tokenBatchToWire },
      batches: lmBatchSource(trainTokens, cfg.train.batch_size, config.n_ctx),
      evaluate: valTokens
        ? () => {
            const val_loss = evalLoss(params, config, valTokens, cfg.train.eval_batches, cfg.train.batch_size, cfg.train.seed + 1);
            return { val_loss, val_ppl: Math.exp(val_loss) };
          }
        : undefined,
      save: (payload) =>
        saveCheckpoint(cfg.out_dir, {
          config,
          params,
          tokenizer,
          stage: 'pretrain',
          stageConfig: cfg,
          parentDir: cfg.init_from ?? null,
          metrics: payload.metrics,
          trainer: payload,
          inputs,
        }),
      optim: cfg.optim,
      loop: cfg.train,
      resume: resumeDir ? loadTrainerState(resumeDir) : undefined,
      quiet: o.quiet,
    });
    return { ...result, params: countParams(config), config };
  } finally {
    for (const v of Object.values(params)) v.dispose();
  }
}
