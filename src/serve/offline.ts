/**
 * Offline batched generation (vLLM's `LLM.generate`): many prompts through the serving engine in process,
 * with no HTTP in between. Continuous batching keeps up to `maxNumSeqs` sequences decoding together, the
 * paged KV cache shares the blocks of common prompt prefixes (few-shot eval prompts), and each request keeps
 * its own sampler, seed and stop strings, so a request gives what it would alone up to float rounding.
 * eval's generate_until tasks (GSM8K, HumanEval) run through here.
 */
import type { LanguageModel } from '../model/generate.js';
import { Engine, type FinishReason, type SamplingParams } from './engine.js';

export interface OfflineRequest {
  promptIds: number[];
  max_tokens: number;
  temperature: number;
  top_p: number;
  top_k: number;
  repetition_penalty: number;
  stop: string[];
  seed?: number;
}

export interface OfflineResult {
  text: string;
  /** Generated tokens (usage.completion_tokens). */
  tokens: number;
  finishReason: FinishReason;
}

export interface OfflineOptions {
  /** Sequences decoded together (vLLM's max_num_seqs). */
  maxNumSeqs?: number;
  /** Share the blocks of common prompt prefixes (default true). */
  prefixCaching?: boolean;
  /** LoRA scale when the model's params carry an adapter. */
  loraScale?: number;
  /** Called as each request finishes, with its index. */
  onDone?: (index: number, result: OfflineResult) => void;
}

/** Generate for every request; results in request order. max_tokens is cut to what fits the context. */
export function generateOffline(model: LanguageModel, requests: readonly OfflineRequest[], o: OfflineOptions = {}): OfflineResult[] {
  const { config } = model;
  const maxNumSeqs = o.maxNumSeqs ?? 16, blockSize = 16;
  const engine = new Engine(config, model.tokenizer, new Map([['', { params: model.params, loraScale: o.loraScale }]]), {
    num_blocks: Math.ceil(config.n_ctx / blockSize) * maxNumSeqs,
    block_size: blockSize,
    max_num_seqs: maxNumSeqs,
    max_num_batched_tokens: Math.max(512, config.n_ctx),
    prefix_caching: o.prefixCaching ?? true,
  });
  engine.autoRun = false;
  const results: OfflineResult[] = new Array(requests.length);
  const texts = requests.map(() => '');
  const reasons: FinishReason[] = requests.map(() => 'length');
  let failure: Error | undefined;
  requests.forEach((r, i) => {
    const params: SamplingParams = {
      max_tokens: Math.max(1, Math.min(r.max_tokens, config.n_ctx - r.promptIds.length)),
      temperature: r.temperature, top_p: r.top_p, top_k: r.top_k, repetition_penalty: r.repetition_penalty,
      presence_penalty: 0, frequency_penalty: 0, stop: r.stop, seed: r.seed, n: 1,
    };
    engine.add({ id: String(i), promptIds: r.promptIds, params, model: '' }, {
      onDelta: (d) => {
        texts[i] += d.text;
        if (d.finishReason) reasons[i] = d.finishReason;
      },
      onFinish: (usage) => {
        results[i] = { text: texts[i]!, tokens: usage.completion_tokens, finishReason: reasons[i]! };
        o.onDone?.(i, results[i]!);
      },
      onError: (err) => (failure ??= err),
    });
  });
  while (engine.hasWork() && !failure) engine.step();
  if (failure) throw failure;
  return results;
}
