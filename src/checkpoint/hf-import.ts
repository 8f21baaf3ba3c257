/**
 * `llmctl import --format hf`: a Hugging Face model directory (config.json, model.safetensors or sharded
 * model-0000x-of-0000y.safetensors + model.safetensors.index.json, tokenizer.json [+ tokenizer_config.json],
 * F32/F16/BF16) → our in-memory model. Llama family (llama, mistral, qwen2 where they fit) and GPT-2; the
 * config and tensor mapping live in hf-names.ts, the reading in model.ts — this only checks what a
 * directory from elsewhere may lack and names the file when it does.
 */
import type * as tf from '@tensorflow/tfjs-core';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelConfig } from '../model/gpt.js';
import { Tokenizer } from '../tokenizer/index.js';
import { log } from '../util/log.js';
import { CONFIG_FILE, MODEL_FILE, MODEL_INDEX_FILE, readModelConfig, readModelParams } from './model.js';

export interface ImportedModel {
  config: ModelConfig;
  params: Record<string, tf.Tensor>;
  tokenizer: Tokenizer;
}

export function importHf(dir: string): ImportedModel {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${dir}: not a directory (expected a Hugging Face model directory)`);
  if (!existsSync(join(dir, CONFIG_FILE))) throw new Error(`${join(dir, CONFIG_FILE)}: not found (expected a Hugging Face model directory)`);
  if (!existsSync(join(dir, MODEL_FILE)) && !existsSync(join(dir, MODEL_INDEX_FILE))) {
    const bin = existsSync(join(dir, 'pytorch_model.bin')) ? ' (pytorch_model.bin is not read: convert it to safetensors)' : '';
    throw new Error(`${join(dir, MODEL_FILE)}: not found, nor ${MODEL_INDEX_FILE}${bin}`);
  }
  const tokPath = join(dir, 'tokenizer.json');
  if (!existsSync(tokPath)) throw new Error(`${tokPath}: not found (only fast-tokenizer files are read; tokenizer.model is not)`);
  const config = readModelConfig(dir);
  let tokenizer: Tokenizer;
  try {
    tokenizer = Tokenizer.load(dir);
  } catch (err) {
    throw new Error(`${tokPath}: ${(err as Error).message}`);
  }
  if (tokenizer.vocabSize > config.vocab_size) {
    throw new Error(`${tokPath}: ${tokenizer.vocabSize} tokens but ${join(dir, CONFIG_FILE)} vocab_size is ${config.vocab_size}`);
  }
  if (tokenizer.vocabSize < config.vocab_size) {
    log().info({ tokenizer: tokenizer.vocabSize, vocab_size: config.vocab_size }, 'the embedding has more rows than the tokenizer has tokens (padding rows are kept)');
  }
  const params = readModelParams(dir, config);
  return { config, params, tokenizer };
}
