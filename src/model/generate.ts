/** Autoregressive generation with a KV cache: prefill the prompt once, then one token per step. */
import * as tf from '@tensorflow/tfjs-core';
import type { Tokenizer } from '../tokenizer/index.js';
import { TextStreamer } from '../tokenizer/index.js';
import { type ForwardOptions, type ModelConfig, type Params, disposeCache, emptyCache, forward } from './gpt.js';
import { stopTokenIds } from './prompt.js';
import type { Rng } from '../util/rng.js';
import { Sampler, type SamplerOptions } from './sample.js';

export interface GenerateOptions extends SamplerOptions {
  max_tokens: number;
  stop: string[];
  /** Called with each piece of text as soon as it is final (stop strings already cut). */
  onText?: (text: string) => void;
  forward?: ForwardOptions; // e.g. { loraScale }
}

export interface Generation {
  text: string;
  ids: number[]; // generated ids only
  promptTokens: number;
  finishReason: 'stop' | 'length';
  ttftMs: number; // time to first token (prefill + first sample)
  tokensPerSecond: number; // decode speed after the first token
}

export interface LanguageModel {
  params: Params;
  config: ModelConfig;
  tokenizer: Tokenizer;
}

/** Logits row of the last position as a Float32Array. */
function lastLogits(logits: tf.Tensor3D): Float32Array {
  const [, T, V] = logits.shape;
  const row = tf.slice(logits, [0, T - 1, 0], [1, 1, V]);
  const values = row.dataSync() as Float32Array;
  row.dispose();
  return values;
}

export function generate(model: LanguageModel, promptIds: number[], o: GenerateOptions): Generation {
  const { params, config, tokenizer } = model;
  if (promptIds.length === 0) throw new Error('generate: the prompt is empty and the tokenizer has no BOS token; give a prompt');
  if (promptIds.length >= config.n_ctx) throw new Error(`generate: prompt has ${promptIds.length} tokens; the context length is ${config.n_ctx}`);
  const sampler = new Sampler(o);
  const stopIds = new Set(stopTokenIds(tokenizer));
  const out = new GenerationText(tokenizer, promptIds[promptIds.length - 1], o.stop);
  const cache = emptyCache(config); // disposeCache empties it in place, so it can be refilled
  const history = [...promptIds];
  const ids: number[] = [];
  let finishReason: Generation['finishReason'] = 'length';
  const t0 = performance.now();
  let tFirst = 0;
  try {
    let feed = promptIds; // the prompt first (prefill), then one token at a time
    while (ids.length < o.max_tokens) {
      const input = tf.tensor2d([feed], [1, feed.length], 'int32');
      const { logits } = forward(params, config, input, { ...o.forward, cache });
      input.dispose();
      const row = lastLogits(logits);
      logits.dispose();
      const next = sampler.sample(row, history);
      if (ids.length === 0) tFirst = performance.now();
      if (stopIds.has(next)) {
        finishReason = 'stop';
        break;
      }
      ids.push(next);
      history.push(next);
      if (out.push(next)) {
        finishReason = 'stop';
        break;
      }
      if (o.onText) emit(o.onText, out.take());
      feed = [next];
      if (cache.length + 1 > config.n_ctx) {
        // Context full: restart from the most recent half of the window (llama.cpp's context shift,
        // nanoGPT's crop), re-encoding it into a fresh cache.
        disposeCache(cache);
        feed = history.slice(-Math.floor(config.n_ctx / 2));
      }
    }
    out.finish(finishReason === 'length');
    if (o.onText) emit(o.onText, out.take());
  } finally {
    disposeCache(cache);
  }
  const text = out.text;
  const tEnd = performance.now();
  return {
    text,
    ids,
    promptTokens: promptIds.length,
    finishReason,
    ttftMs: tFirst - t0,
    tokensPerSecond: ids.length > 1 ? ((ids.length - 1) * 1000) / (tEnd - tFirst) : 0,
  };
}

export interface BatchGenerateOptions extends SamplerOptions {
  max_new_tokens: number;
  forward?: ForwardOptions;
  /** Draw from this generator (seeded and resumable, e.g. an RL trainer's) instead of a new one. */
  rng?: Rng;
  /** Ids that end a row; default stopTokenIds(tokenizer). */
  stopIds?: number[];
}

export interface BatchGeneration {
  /** Generated ids per row; a row that stopped ends with its stop token (RL trains on it). */
  ids: number[][];
  /** Whether each row hit a stop token (false: it ran out of max_new_tokens). */
  finished: boolean[];
}

/**
 * Sample continuations of several prompts at once with one KV cache: prompts are left-padded to the
 * longest (ForwardOptions.leftPad), prefilled together, then decoded one token per row per step. Rows
 * that stop are dropped from the batch (and the cache). No stop strings, no context shift: the prompts
 * plus max_new_tokens must fit the context.
 */
export function generateBatch(model: LanguageModel, prompts: number[][], o: BatchGenerateOptions): BatchGeneration {
  const { params, config, tokenizer } = model;
  const longest = Math.max(...prompts.map((p) => p.length));
  if (prompts.some((p) => p.length === 0)) throw new Error('generateBatch: a prompt is empty');
  if (longest + o.max_new_tokens > config.n_ctx) throw new Error(`generateBatch: a prompt of ${longest} tokens + max_new_tokens ${o.max_new_tokens} exceeds the context length ${config.n_ctx}`);
  const sampler = new Sampler(o, o.rng);
  const stopIds = new Set(o.stopIds ?? stopTokenIds(tokenizer));
  const ids: number[][] = prompts.map(() => []), finished = prompts.map(() => false);
  let active = prompts.map((_, i) => i); // rows still generating, in cache order
  let leftPad = prompts.map((p) => longest - p.length);
  let feed: number[][] = prompts.map((p, i) => [...Array<number>(leftPad[i]!).fill(tokenizer.padId), ...p]);
  const cache = emptyCache(config);
  try {
    for (let step = 0; step < o.max_new_tokens && active.length > 0; step++) {
      const T = feed[0]!.length, V = config.vocab_size;
      const input = tf.tensor2d(feed, [active.length, T], 'int32');
      const { logits } = forward(params, config, input, { ...o.forward, cache, leftPad });
      input.dispose();
      const last = tf.slice(logits, [0, T - 1, 0], [active.length, 1, V]);
      const rows = last.dataSync() as Float32Array;
      tf.dispose([logits, last]);
      const keep: number[] = [];
      active.forEach((row, j) => {
        const next = sampler.sample(rows.subarray(j * V, (j + 1) * V), [...prompts[row]!, ...ids[row]!]);
        ids[row]!.push(next);
        if (stopIds.has(next)) finished[row] = true;
        else keep.push(j);
      });
      if (keep.length < active.length && keep.length > 0) {
        // Drop the finished rows from the cache so later steps compute only live rows.
        const idx = tf.tensor1d(keep, 'int32');
        for (const kv of [cache.k, cache.v]) {
          kv.forEach((t, layer) => {
            kv[layer] = tf.gather(t!, idx) as tf.Tensor4D;
            t!.dispose();
          });
        }
        idx.dispose();
      }
      active = keep.map((j) => active[j]!);
      leftPad = keep.map((j) => leftPad[j]!);
      feed = active.map((row) => [ids[row]!.at(-1)!]);
    }
  } finally {
    disposeCache(cache);
  }
  return { ids, finished };
}

function emit(onText: (t: string) => void, text: string): void {
  if (text) onText(text);
}

/**
 * The text of one generation as it grows token by token (generate and serve share it): detokenized
 * incrementally (never half a character), cut before the first stop string, and released only once it
 * can no longer turn out to be the start of a stop string.
 */
export class GenerationText {
  text = '';
  private emitted = 0;
  private done = false;
  private readonly streamer: TextStreamer;
  private readonly holdBack: number;

  constructor(tokenizer: Tokenizer, prevId: number | undefined, private readonly stop: readonly string[]) {
    this.streamer = new TextStreamer(tokenizer, { prevId });
    this.holdBack = Math.max(0, ...stop.map((s) => s.length - 1));
  }

  /** Append a token's text; true when a stop string has now appeared (the text is cut before it). */
  push(id: number): boolean {
    this.text += this.streamer.push(id);
    const hit = firstStop(this.text, this.stop);
    if (hit < 0) return false;
    this.text = this.text.slice(0, hit);
    this.done = true;
    return true;
  }

  /** The generation ended: everything left becomes final (`flush`: also an incomplete trailing character). */
  finish(flush: boolean): void {
    if (flush) this.text += this.streamer.flush();
    this.done = true;
  }

  /** Text that became final since the last call. */
  take(): string {
    const safe = this.done ? this.text.length : this.text.length - this.holdBack;
    if (safe <= this.emitted) return '';
    const piece = this.text.slice(this.emitted, safe);
    this.emitted = safe;
    return piece;
  }
}

function firstStop(text: string, stops: readonly string[]): number {
  let at = -1;
  for (const s of stops) {
    const i = s ? text.indexOf(s) : -1;
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}
