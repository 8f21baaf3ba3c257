/**
 * TRL's setup_chat_format for checkpoints whose vocabulary has no chat markup (the imported stories260K,
 * any Llama-family import): add <|im_start|> and <|im_end|> as special tokens with the ChatML template,
 * and grow the embedding (and an untied head) to the new vocabulary. New rows start at the mean of the
 * existing rows (as transformers' resize_token_embeddings does by default), so the new tokens begin as an
 * "average" token rather than noise. Unlike TRL, bos/eos/pad stay the model's own: plain prompts still
 * need them; generation also stops on <|im_end|> (prompt.ts).
 * The vocabulary grows by exactly the tokens added (no padding to a multiple), so len(tokenizer) equals
 * vocab_size, which is what PEFT's AutoPeftModel resizes a base model to.
 */
import * as tf from '@tensorflow/tfjs-core';
import { CHATML_TEMPLATE, IM_END, IM_START, type Tokenizer } from '../tokenizer/index.js';
import type { ModelConfig, Params } from './gpt.js';

export interface ChatReadyModel {
  config: ModelConfig;
  params: Params;
  tokenizer: Tokenizer;
  /** The tokens added (empty when the tokenizer already had a chat template). */
  added: string[];
}

/** The model with ChatML tokens and template; params that change are new tensors (the old ones disposed). */
export function setupChatFormat(m: { config: ModelConfig; params: Params; tokenizer: Tokenizer }): ChatReadyModel {
  if (m.tokenizer.chatTemplate) return { ...m, added: [] };
  const missing = [IM_START, IM_END].filter((t) => m.tokenizer.tokenToId(t) === undefined);
  const tokenizer = m.tokenizer.withSpecialTokens([IM_START, IM_END], CHATML_TEMPLATE);
  const vocab = Math.max(m.config.vocab_size, tokenizer.vocabSize);
  const newIds = missing.map((t) => tokenizer.tokenToId(t)!);
  const config = { ...m.config, vocab_size: vocab };
  return { config, params: resizeVocab(m.config, m.params, vocab, newIds), tokenizer, added: missing };
}

/**
 * Embedding (and untied head) grown to `vocab` rows; rows of `reinit` ids and all new rows get the mean
 * of the old rows. Other params are passed through; the replaced tensors are disposed.
 */
export function resizeVocab(c: ModelConfig, params: Params, vocab: number, reinit: readonly number[] = []): Params {
  const out: Params = { ...params };
  const grow = (w: tf.Tensor2D, rowsAreTokens: boolean): tf.Tensor2D =>
    tf.tidy(() => {
      const rows = rowsAreTokens ? w : (tf.transpose(w) as tf.Tensor2D);
      const old = rows.shape[0];
      const mean = tf.mean(rows, 0, true);
      const keep = Array.from({ length: vocab }, (_, id) => id < old && !reinit.includes(id));
      const mask = tf.tensor2d(keep.map((k) => (k ? 1 : 0)), [vocab, 1]);
      const padded = vocab > old ? tf.concat([rows, tf.zeros([vocab - old, rows.shape[1]])], 0) : rows;
      const grown = tf.add(tf.mul(padded, mask), tf.mul(tf.sub(1, mask), mean)) as tf.Tensor2D;
      return rowsAreTokens ? grown : (tf.transpose(grown) as tf.Tensor2D);
    });
  out['wte.weight'] = grow(params['wte.weight'] as tf.Tensor2D, true);
  params['wte.weight']!.dispose();
  if (!c.tie_embeddings) {
    out['lm_head.weight'] = grow(params['lm_head.weight'] as tf.Tensor2D, false); // [d, vocab] in memory
    params['lm_head.weight']!.dispose();
  }
  return out;
}
