/**
 * One serving step through the model: the scheduled segments (prompt chunks and decode tokens of many
 * sequences) become one flat batch of tokens, run through gpt.ts's forward with the paged-attention hook,
 * and come back as one logits row per sequence that samples this step.
 *
 * LoRA: sequences on different adapters are scheduled in the same step; each adapter's segments run as
 * one forward over its own parameter map (base tensors + that adapter's lora_A/B), all over the one KV pool.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type ModelConfig, type Params, forward } from '../model/gpt.js';
import { KvPool, type StepSegment, pagedAttention } from './paged-attention.js';

export interface ModelVariant {
  params: Params;
  /** LoRA scale alpha/r when params carry an adapter. */
  loraScale?: number;
}

export interface RunSegment extends StepSegment {
  /** The tokens at positions start..start+count-1. */
  tokens: readonly number[];
  /** Which model (base or an adapter) this sequence runs on. */
  variant: string;
  /** Return the logits of the segment's last token. */
  sample: boolean;
}

export class ModelRunner {
  constructor(
    readonly config: ModelConfig,
    readonly variants: ReadonlyMap<string, ModelVariant>,
    readonly pool: KvPool,
  ) {}

  /** Logits of the last token of every sampling segment, in segment order (undefined for the others). */
  run(segments: readonly RunSegment[]): (Float32Array | undefined)[] {
    const out: (Float32Array | undefined)[] = new Array(segments.length);
    const groups = new Map<string, number[]>();
    segments.forEach((s, i) => {
      const idx = groups.get(s.variant);
      if (idx) idx.push(i);
      else groups.set(s.variant, [i]);
    });
    for (const [name, idx] of groups) {
      const variant = this.variants.get(name);
      if (!variant) throw new Error(`unknown model '${name}'`);
      const group = idx.map((i) => segments[i]!);
      const ids: number[] = [];
      const rows: number[] = [];
      for (const s of group) {
        for (let t = 0; t < s.count; t++) ids.push(s.tokens[t]!);
        if (s.sample) rows.push(ids.length - 1);
      }
      const paged = pagedAttention(this.pool, group);
      const input = tf.tensor2d(ids, [1, ids.length], 'int32');
      const { logits } = forward(variant.params, this.config, input, { paged, loraScale: variant.loraScale });
      input.dispose();
      const V = this.config.vocab_size;
      if (rows.length) {
        // Only the sampled rows leave the backend (a prompt chunk's other positions are not needed).
        const picked = tf.tidy(() => tf.gather(tf.reshape(logits, [ids.length, V]), tf.tensor1d(rows, 'int32')));
        const data = picked.dataSync() as Float32Array;
        picked.dispose();
        let r = 0;
        idx.forEach((i, j) => {
          if (group[j]!.sample) out[i] = data.subarray(r * V, ++r * V); // views of this step's fresh array
        });
      }
      logits.dispose();
    }
    return out;
  }
}
