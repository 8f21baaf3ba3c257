/**
 * PagedAttention (Kwon et al., 2023) for our backends: the KV pool and the attention kernel that reads it
 * through block tables.
 *
 * Where the numbers live: one Float32Array per layer for keys and one for values, laid out
 * [block][slot][kv_head][head_dim]. On the WASM and CPU backends tensor memory is ordinary host memory and
 * tfjs tensors are immutable, so a pool held as a tensor would be copied whole on every write (a scatter
 * makes a new tensor), while a host array takes each step's new keys/values in place and the kernel reads
 * exactly the rows it needs. The pool is therefore not a tensor at all, which also keeps the engine's tensor
 * count independent of how many sequences are cached. (On a GPU backend a tensor pool with a gather
 * kernel would be the better layout; this one reads q/k/v back to the host once per layer.)
 *
 * The kernel: for a step's N tokens (prompt chunks and decode tokens of several sequences), write each
 * token's k/v into its slot, then for every token and head attend over positions 0..pos of its own
 * sequence — causal within a chunk, and across chunks and steps through the pool.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig, PagedAttention } from '../model/gpt.js';

export class KvPool {
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  /** Floats per slot: n_kv_head × head_dim. */
  readonly rowSize: number;

  constructor(
    readonly config: ModelConfig,
    readonly numBlocks: number,
    readonly blockSize: number,
  ) {
    this.rowSize = config.n_kv_head * (config.n_embd / config.n_head);
    const size = numBlocks * blockSize * this.rowSize;
    this.k = Array.from({ length: config.n_layer }, () => new Float32Array(size));
    this.v = Array.from({ length: config.n_layer }, () => new Float32Array(size));
  }

  /** Bytes the pool holds (what the num_blocks / memory budget sizes). */
  get bytes(): number {
    return 2 * this.config.n_layer * this.k[0]!.byteLength;
  }

  static bytesPerBlock(config: ModelConfig, blockSize: number): number {
    return 2 * config.n_layer * blockSize * config.n_kv_head * (config.n_embd / config.n_head) * 4;
  }

  /** Copy-on-write: duplicate a block's contents in every layer. */
  copyBlock(from: number, to: number): void {
    const n = this.blockSize * this.rowSize;
    for (let l = 0; l < this.config.n_layer; l++) {
      this.k[l]!.copyWithin(to * n, from * n, (from + 1) * n);
      this.v[l]!.copyWithin(to * n, from * n, (from + 1) * n);
    }
  }
}

/** One sequence's part of a step: `count` new tokens at positions start..start+count-1. */
export interface StepSegment {
  blockTable: readonly number[];
  start: number;
  count: number;
}

/** The PagedAttention hook gpt.ts's forward calls, for one step's flat batch of segments. */
export function pagedAttention(pool: KvPool, segments: readonly StepSegment[]): PagedAttention {
  const { config, blockSize } = pool;
  const hd = config.n_embd / config.n_head, kvh = config.n_kv_head, rep = config.n_head / kvh;
  const N = segments.reduce((n, s) => n + s.count, 0);
  const positions = new Int32Array(N);
  // Pool row (slot index × rowSize) of every position each segment can see, resolved once per step.
  const rowsOf: Int32Array[] = [];
  let i = 0;
  for (const s of segments) {
    const end = s.start + s.count;
    const rows = new Int32Array(end);
    for (let p = 0; p < end; p++) rows[p] = (s.blockTable[Math.floor(p / blockSize)]! * blockSize + (p % blockSize)) * pool.rowSize;
    rowsOf.push(rows);
    for (let t = 0; t < s.count; t++) positions[i++] = s.start + t;
  }
  const scale = 1 / Math.sqrt(hd);

  const attend = (layer: number, q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor2D => {
    // Head-major [1, H, N, hd] as the model computed them: element (h, i, d) at (h·N + i)·hd + d.
    const qd = q.dataSync(), kd = k.dataSync(), vd = v.dataSync();
    const K = pool.k[layer]!, V = pool.v[layer]!;
    let tok = 0;
    for (let s = 0; s < segments.length; s++) {
      const seg = segments[s]!, rows = rowsOf[s]!;
      for (let t = 0; t < seg.count; t++, tok++) {
        const row = rows[seg.start + t]!;
        for (let g = 0; g < kvh; g++) {
          const src = (g * N + tok) * hd, dst = row + g * hd;
          for (let d = 0; d < hd; d++) {
            K[dst + d] = kd[src + d]!;
            V[dst + d] = vd[src + d]!;
          }
        }
      }
    }
    const out = new Float32Array(N * config.n_embd);
    let scores = new Float64Array(64);
    const acc = new Float64Array(hd);
    tok = 0;
    for (let s = 0; s < segments.length; s++) {
      const seg = segments[s]!, rows = rowsOf[s]!;
      for (let t = 0; t < seg.count; t++, tok++) {
        const ctx = seg.start + t + 1; // causal: positions 0..pos
        if (scores.length < ctx) scores = new Float64Array(2 * ctx);
        for (let h = 0; h < config.n_head; h++) {
          const qo = (h * N + tok) * hd, ko = Math.floor(h / rep) * hd; // GQA: query head h reads kv head h / rep
          let max = -Infinity;
          for (let j = 0; j < ctx; j++) {
            const r = rows[j]! + ko;
            let dot = 0;
            for (let d = 0; d < hd; d++) dot += qd[qo + d]! * K[r + d]!;
            dot *= scale;
            scores[j] = dot;
            if (dot > max) max = dot;
          }
          let sum = 0;
          for (let j = 0; j < ctx; j++) {
            const e = Math.exp(scores[j]! - max);
            scores[j] = e;
            sum += e;
          }
          acc.fill(0);
          for (let j = 0; j < ctx; j++) {
            const w = scores[j]! / sum, r = rows[j]! + ko;
            for (let d = 0; d < hd; d++) acc[d] += w * V[r + d]!;
          }
          out.set(acc, tok * config.n_embd + h * hd);
        }
      }
    }
    return tf.tensor2d(out, [N, config.n_embd]);
  };
  return { positions, attend };
}
