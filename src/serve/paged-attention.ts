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
 * kernel would be the better layout.)
 *
 * The attention: for a step's N tokens (prompt chunks and decode tokens of several sequences), write each
 * token's k/v into its slot, then for every token and head attend over positions 0..pos of its own
 * sequence — causal within a chunk, and across chunks and steps through the pool. With the native addon
 * gpt.ts hands the pool and the tables below to one kernel per block (the whole block, or just the
 * attention on the per-op path); `attend` here is the same computation in JS for the WASM kernels, which
 * reads q/k/v back to the host once per layer.
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

/**
 * The PagedAttention hook gpt.ts's forward calls, for one step's flat batch of segments. The tables say
 * where everything lives (the native kernels read them directly, see gpt.ts); `attend` is the same
 * computation in JS for the WASM kernels.
 */
export function pagedAttention(pool: KvPool, segments: readonly StepSegment[]): PagedAttention {
  const { config, blockSize, rowSize } = pool;
  const hd = config.n_embd / config.n_head, kvh = config.n_kv_head, rep = config.n_head / kvh;
  const N = segments.reduce((n, s) => n + s.count, 0);
  const pos = new Int32Array(N), base = new Int32Array(N);
  // Pool slot of every position each segment can see, resolved once per step: segment s's positions
  // 0..end-1 at slots[offset(s) + p], and base[i] = offset of token i's segment.
  const slots = new Int32Array(segments.reduce((n, s) => n + s.start + s.count, 0));
  let i = 0, offset = 0;
  for (const s of segments) {
    const end = s.start + s.count;
    for (let p = 0; p < end; p++) slots[offset + p] = s.blockTable[Math.floor(p / blockSize)]! * blockSize + (p % blockSize);
    for (let t = 0; t < s.count; t++, i++) {
      pos[i] = s.start + t;
      base[i] = offset;
    }
    offset += end;
  }
  const scale = 1 / Math.sqrt(hd);

  const attend = (layer: number, q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor2D => {
    // Head-major [1, H, N, hd] as the model computed them: element (h, i, d) at (h·N + i)·hd + d.
    const qd = q.dataSync(), kd = k.dataSync(), vd = v.dataSync();
    const K = pool.k[layer]!, V = pool.v[layer]!;
    // Every token's keys/values first: a prompt chunk reads its own earlier positions from the pool.
    for (let tok = 0; tok < N; tok++) {
      const row = slots[base[tok]! + pos[tok]!]! * rowSize;
      for (let g = 0; g < kvh; g++) {
        const src = (g * N + tok) * hd, dst = row + g * hd;
        for (let d = 0; d < hd; d++) {
          K[dst + d] = kd[src + d]!;
          V[dst + d] = vd[src + d]!;
        }
      }
    }
    const out = new Float32Array(N * config.n_embd);
    let scores = new Float64Array(64);
    const acc = new Float64Array(hd);
    for (let tok = 0; tok < N; tok++) {
      const ctx = pos[tok]! + 1, b = base[tok]!; // causal: positions 0..pos
      if (scores.length < ctx) scores = new Float64Array(2 * ctx);
      for (let h = 0; h < config.n_head; h++) {
        const qo = (h * N + tok) * hd, ko = Math.floor(h / rep) * hd; // GQA: query head h reads kv head h / rep
        let max = -Infinity;
        for (let j = 0; j < ctx; j++) {
          const r = slots[b + j]! * rowSize + ko;
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
          const w = scores[j]! / sum, r = slots[b + j]! * rowSize + ko;
          for (let d = 0; d < hd; d++) acc[d] += w * V[r + d]!;
        }
        out.set(acc, tok * config.n_embd + h * hd);
      }
    }
    return tf.tensor2d(out, [N, config.n_embd]);
  };
  return { positions: pos, tables: { k: pool.k, v: pool.v, base, slots }, attend };
}
