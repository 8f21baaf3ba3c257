/**
 * Opt-in data-parallel training across worker threads (`train.workers`), like DDP on one machine: the
 * WASM backend runs single-threaded in Node, so N replicas (the main thread + N−1 workers) use N cores.
 *
 * Per optimizer step the main thread draws all grad_accum × N micro-batches from the trainer's rng, in
 * the order one process with grad_accum × N would; replica r gets micro-batches [r·A, (r+1)·A). Workers
 * receive the current trainable weights plus their batches (Float32Array/Int32Array transfers), return
 * their summed gradients and per-batch losses; the main thread computes its own share meanwhile, then
 * averages, clips and applies AdamW as usual. Frozen weights (LoRA's base) are sent once, at start.
 * With dropout 0 the result equals single-process accumulation up to float summation order.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Worker } from 'node:worker_threads';
import { activeBackend } from '../backend/index.js';
import type { ModelConfig, Params } from '../model/gpt.js';
import { log } from '../util/log.js';
import { addGrads } from './adamw.js';
import type { TokenBatch } from './losses.js';

/** Forward options a worker can receive (no caches, no functions). */
export interface WireForwardOptions {
  training?: boolean;
  loraScale?: number;
  loraDropout?: number;
  freezeBase?: boolean;
}

export interface WireTensor<D extends Float32Array | Int32Array = Float32Array | Int32Array> {
  shape: number[];
  data: D;
}

/** A TokenBatch as plain arrays. */
export interface WireBatch {
  inputs: WireTensor<Int32Array>;
  targets: Int32Array;
  mask?: Float32Array;
}

/** Everything a worker needs to compute the same loss as the main thread. */
export interface WorkerSpec {
  backend: string;
  model: ModelConfig;
  forward: WireForwardOptions;
  frozen: Record<string, WireTensor>;
  trainable: Record<string, number[]>;
}

/** What a stage hands the trainer to train with `workers` replicas (ignored when workers is 1). */
export interface ParallelOptions<B> {
  workers: number;
  model: ModelConfig;
  forward: WireForwardOptions;
  /** Tensors the loss reads that do not train (sent once). Omit when every weight trains. */
  frozen?: Params;
  toWire(batch: B): WireBatch;
}

/** seeds: the dropout seed of each micro-batch (see trainer.ts dropoutSeed). */
export type ToWorker = { type: 'step'; weights: Record<string, Float32Array>; batches: WireBatch[]; seeds?: number[] };
export type FromWorker =
  | { type: 'ready' }
  | { type: 'result'; losses: number[]; grads: Record<string, Float32Array> }
  | { type: 'error'; message: string };

/** Copy a TokenBatch (pretrain's LmBatch, sft's SftBatch) into transferable arrays. */
export function tokenBatchToWire(b: TokenBatch): WireBatch {
  return {
    inputs: { shape: b.inputs.shape.slice(), data: Int32Array.from(b.inputs.dataSync() as Int32Array) },
    targets: Int32Array.from(b.targets.dataSync() as Int32Array),
    ...(b.mask ? { mask: Float32Array.from(b.mask.dataSync() as Float32Array) } : {}),
  };
}

function wireBuffers(b: WireBatch): ArrayBuffer[] {
  return [b.inputs.data.buffer, b.targets.buffer, ...(b.mask ? [b.mask.buffer] : [])] as ArrayBuffer[];
}

/** The worker entry: the built .js next to this file, or (under tsx, from source) a bootstrap that registers tsx first. */
function spawn(spec: WorkerSpec): Worker {
  const here = import.meta.url;
  if (here.endsWith('.js')) return new Worker(new URL('./parallel-worker.js', here), { workerData: spec });
  // Node 20 does not apply the parent's `--import tsx` hooks to a worker's entry module, so register them.
  const entry = new URL('./parallel-worker.ts', here).href;
  const code = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(code, { eval: true, workerData: spec });
}

const live = new Set<Worker>();
/** Worker threads currently running (tests check that every run leaves none behind). */
export function liveWorkers(): number {
  return live.size;
}

function firstLine(msg: string): string {
  return msg.split('\n')[0]!.slice(0, 300);
}

class Replica {
  private pending?: { resolve(m: FromWorker): void; reject(e: Error): void };
  private failure?: Error;

  constructor(readonly id: number, readonly worker: Worker) {
    live.add(worker);
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'error') this.fail(new Error(`data-parallel worker ${id}: ${firstLine(m.message)}`));
      else this.settle()?.resolve(m);
    });
    worker.on('error', (err) => this.fail(new Error(`data-parallel worker ${id}: ${firstLine(err.message)}`)));
    worker.on('exit', (code) => {
      live.delete(worker);
      this.fail(new Error(`data-parallel worker ${id} exited (code ${code})`));
    });
  }

  private settle() {
    const p = this.pending;
    this.pending = undefined;
    return p;
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.settle()?.reject(this.failure);
  }

  /** Send a message (its buffers transferred) and wait for the worker's answer. */
  request(msg: ToWorker | undefined, transfer: ArrayBuffer[] = []): Promise<FromWorker> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      if (msg) this.worker.postMessage(msg, transfer);
    });
  }
}

export interface RemoteResult {
  lossSum: number;
  /** Summed (not averaged) gradients of the workers' micro-batches, keyed by parameter name. */
  grads: Record<string, tf.Tensor>;
}

export class WorkerPool<B> {
  private constructor(private readonly replicas: Replica[], private readonly opts: ParallelOptions<B>, private readonly params: Record<string, tf.Variable>) {}

  /** Start workers−1 threads and wait until each has its backend and frozen weights. */
  static async start<B>(opts: ParallelOptions<B>, params: Record<string, tf.Variable>): Promise<WorkerPool<B>> {
    const backend = activeBackend()?.name ?? tf.getBackend();
    const spec: WorkerSpec = {
      backend,
      model: opts.model,
      forward: opts.forward,
      frozen: Object.fromEntries(Object.entries(opts.frozen ?? {}).filter(([k]) => !(k in params)).map(([k, t]) => [k, { shape: t.shape.slice(), data: t.dataSync() as Float32Array | Int32Array }])),
      trainable: Object.fromEntries(Object.entries(params).map(([k, v]) => [k, v.shape.slice()])),
    };
    const pool = new WorkerPool<B>([], opts, params);
    try {
      for (let i = 1; i < opts.workers; i++) pool.replicas.push(new Replica(i, spawn(spec)));
      await Promise.all(pool.replicas.map((r) => r.request(undefined))); // each answers 'ready'
    } catch (err) {
      await pool.close();
      throw err;
    }
    log().info({ workers: opts.workers, backend }, `data-parallel: ${opts.workers} replicas (main + ${opts.workers - 1} worker threads)`);
    return pool;
  }

  /**
   * Hand batches[i·perReplica…] to worker i+1 (they start at once; the tensors are freed here), resolve
   * with their summed loss and gradients. Attach a handler before awaiting other work: use the result.
   */
  run(batches: B[], perReplica: number, dispose: (b: B) => void, seeds?: number[]): Promise<RemoteResult> {
    const weights = Object.fromEntries(Object.entries(this.params).map(([k, v]) => [k, v.dataSync() as Float32Array]));
    const answers = this.replicas.map((r, i) => {
      const mine = batches.slice(i * perReplica, (i + 1) * perReplica).map((b) => this.opts.toWire(b));
      // Each worker gets its own copy of the weights: transferring detaches the buffer.
      const w = Object.fromEntries(Object.entries(weights).map(([k, d]) => [k, Float32Array.from(d)]));
      const mySeeds = seeds?.slice(i * perReplica, (i + 1) * perReplica);
      return r.request({ type: 'step', weights: w, batches: mine, ...(mySeeds ? { seeds: mySeeds } : {}) }, [...Object.values(w).map((d) => d.buffer as ArrayBuffer), ...mine.flatMap(wireBuffers)]);
    });
    for (const b of batches) dispose(b);
    const result = Promise.all(answers).then((msgs) => {
      let lossSum = 0;
      let grads: Record<string, tf.Tensor> = {};
      for (const m of msgs) {
        if (m.type !== 'result') throw new Error(`data-parallel: unexpected worker message '${m.type}'`);
        for (const l of m.losses) lossSum += l;
        const received = Object.fromEntries(Object.entries(m.grads).map(([k, d]) => [k, tf.tensor(d, this.params[k]!.shape, 'float32')]));
        grads = addGrads(grads, received);
      }
      return { lossSum, grads };
    });
    result.catch(() => {}); // the trainer awaits it after its own share; avoid an "unhandled rejection" meanwhile
    return result;
  }

  /** Terminate every worker thread (idempotent). */
  async close(): Promise<void> {
    await Promise.all(this.replicas.map((r) => r.worker.terminate()));
  }
}
