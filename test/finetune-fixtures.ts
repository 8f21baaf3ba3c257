/** Shared set-up of the sft / lora tests (not a test file): a tiny ChatML tokenizer and base checkpoint. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { saveCheckpoint, disposeParams } from '../src/checkpoint/model.js';
import { LoraConfigSchema, SftConfigSchema } from '../src/config/stages.js';
import { type ModelConfig, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';

export const ALPACA_30 = fileURLToPath(new URL('./fixtures/alpaca_30.jsonl', import.meta.url));

let tok: Tokenizer | undefined;
/** A 512-token byte-level BPE (with <|endoftext|>, <|im_start|>, <|im_end|>) trained on the fixture rows. */
export function tinyTokenizer(): Tokenizer {
  tok ??= Tokenizer.train([readFileSync(ALPACA_30, 'utf8')], { vocabSize: 512 });
  return tok;
}

export function tinyModel(over: Partial<ModelConfig> = {}): ModelConfig {
  return resolveModelConfig({ arch: 'gpt2', vocab_size: 512, n_ctx: 64, n_layer: 1, n_embd: 32, n_head: 2, ...over });
}

/** Write a freshly initialised tiny model + the tiny tokenizer as a checkpoint directory. */
export async function writeTinyBase(dir: string, over: Partial<ModelConfig> = {}, seed = 3): Promise<ModelConfig> {
  const config = tinyModel(over);
  const params = initParams(config, seed);
  await saveCheckpoint(dir, { config, params, tokenizer: tinyTokenizer(), stage: 'test-base', stageConfig: {}, parentDir: null });
  disposeParams(params);
  return config;
}

const optim = { lr: 3e-3, warmup_steps: 0, schedule: 'constant' };

export function sftConfig(base: string, out: string, over: { train?: Record<string, unknown>; data?: Record<string, unknown> } = {}) {
  return SftConfigSchema.parse({
    base, out_dir: out, optim,
    data: { path: ALPACA_30, ...over.data },
    train: { max_steps: 4, batch_size: 2, eval_every: 0, save_every: 0, log_every: 1, seed: 5, ...over.train },
  });
}

export function loraConfig(base: string, out: string, over: { train?: Record<string, unknown>; data?: Record<string, unknown>; lora?: Record<string, unknown> } = {}) {
  return LoraConfigSchema.parse({
    base, out_dir: out, optim: { ...optim, lr: 1e-2 },
    data: { path: ALPACA_30, ...over.data },
    lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q', 'k', 'v', 'o', 'up', 'down'], ...over.lora },
    train: { max_steps: 4, batch_size: 2, eval_every: 0, save_every: 0, log_every: 1, seed: 5, ...over.train },
  });
}
