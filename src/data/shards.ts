/**
 * Token shards: flat little-endian uint16 (vocab ≤ 65,536) or uint32 files, nanoGPT's train.bin layout,
 * split into shards so huge corpora stream. meta.json beside them lists shards, counts and dtype.
 */
import * as tf from '@tensorflow/tfjs-core';
import { closeSync, existsSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { readJson, writeJson } from '../checkpoint/manifest.js';
import type { Rng } from '../util/rng.js';
import type { BatchSource } from '../train/trainer.js';
import type { StepReport } from './clean/pipeline.js';

export type Split = 'train' | 'val';

export interface ShardMeta {
  format: 'llmctl-tokens';
  dtype: 'uint16' | 'uint32';
  vocab_size: number;
  eos_id: number;
  splits: Record<Split, { shards: string[]; tokens: number }>;
  sources: { path: string; bytes: number }[];
  /** What `prepare`'s clean steps did (documents and bytes in/out per step). */
  clean?: StepReport[];
}

/** Appends tokens to numbered shard files of one split. */
export class ShardWriter {
  private fd: number | undefined;
  private inShard = 0;
  readonly shards: string[] = [];
  tokens = 0;

  constructor(private readonly dir: string, private readonly split: Split, private readonly dtype: ShardMeta['dtype'], private readonly shardTokens: number) {}

  write(ids: number[]): void {
    let i = 0;
    while (i < ids.length) {
      if (this.fd === undefined || this.inShard >= this.shardTokens) this.open();
      const n = Math.min(ids.length - i, this.shardTokens - this.inShard);
      const arr = this.dtype === 'uint16' ? Uint16Array.from(ids.slice(i, i + n)) : Uint32Array.from(ids.slice(i, i + n));
      writeSync(this.fd!, new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
      this.inShard += n;
      this.tokens += n;
      i += n;
    }
  }

  private open(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    const name = `${this.split}-${String(this.shards.length).padStart(5, '0')}.bin`;
    this.fd = openSync(join(this.dir, name), 'w');
    this.shards.push(name);
    this.inShard = 0;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

export function writeShardMeta(dir: string, meta: ShardMeta): void {
  writeJson(join(dir, 'meta.json'), meta);
}

export function readShardMeta(dir: string): ShardMeta {
  const path = join(dir, 'meta.json');
  if (!existsSync(path)) throw new Error(`${path}: not found (run \`llmctl prepare\` to make token shards)`);
  const meta = readJson(path, 'token shard metadata') as ShardMeta;
  if (meta.format !== 'llmctl-tokens') throw new Error(`${path}: format is ${JSON.stringify(meta.format)}, expected "llmctl-tokens"`);
  return meta;
}

/** All tokens of a split in memory (fine up to a few hundred million tokens). */
export function loadSplit(dir: string, split: Split): Uint16Array | Uint32Array {
  const meta = readShardMeta(dir);
  const Ctor = meta.dtype === 'uint16' ? Uint16Array : Uint32Array;
  const out = new Ctor(meta.splits[split].tokens);
  let at = 0;
  for (const name of meta.splits[split].shards) {
    const buf = readFileSync(join(dir, name));
    const arr = new Ctor(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
    out.set(arr, at);
    at += arr.length;
  }
  return out;
}

export interface LmBatch {
  inputs: tf.Tensor2D; // [B, T] int32
  targets: tf.Tensor1D; // [B*T] int32, inputs shifted by one
}

/** Random windows of T+1 tokens (nanoGPT's get_batch): x = w[0..T), y = w[1..T]. */
export function sampleLmBatch(tokens: Uint16Array | Uint32Array, rng: Rng, batchSize: number, T: number): LmBatch {
  if (tokens.length < T + 1) throw new Error(`split has ${tokens.length} tokens, fewer than context length + 1 = ${T + 1}`);
  const x = new Int32Array(batchSize * T), y = new Int32Array(batchSize * T);
  for (let b = 0; b < batchSize; b++) {
    const start = rng.nextInt(tokens.length - T);
    for (let t = 0; t < T; t++) {
      x[b * T + t] = tokens[start + t]!;
      y[b * T + t] = tokens[start + t + 1]!;
    }
  }
  return { inputs: tf.tensor2d(x, [batchSize, T], 'int32'), targets: tf.tensor1d(y, 'int32') };
}

export function lmBatchSource(tokens: Uint16Array | Uint32Array, batchSize: number, T: number): BatchSource<LmBatch> {
  return {
    next: (rng) => sampleLmBatch(tokens, rng, batchSize, T),
    tokens: () => batchSize * T,
    dispose: (b) => {
      b.inputs.dispose();
      b.targets.dispose();
    },
  };
}
