/**
 * Data-parallel training (src/train/parallel.ts): workers = N with grad_accum A trains exactly like one
 * process with grad_accum A·N (up to float32 summation order), for full training and for LoRA (frozen
 * base sent to the workers, masked loss); no tensor leaks on the main thread; worker threads end with
 * the run, also when it fails.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { disposeParams } from '../src/checkpoint/model.js';
import { OptimSchema, TrainLoopSchema, type TrainLoopConfigInput } from '../src/config/schemas.js';
import { type ModelConfig, type Params, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { initLora, loraScale } from '../src/model/lora.js';
import { type TokenBatch, modelLoss } from '../src/train/losses.js';
import { type ParallelOptions, liveWorkers, tokenBatchToWire } from '../src/train/parallel.js';
import { type BatchSource, type TrainJob, train } from '../src/train/trainer.js';
import { setupLogger } from '../src/util/log.js';
import type { Rng } from '../src/util/rng.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-parallel-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = (name: string) => join(TMP, `${name}-${dirCount++}`);

// Tiny Llama, no biases (see trainer.test.ts: an exactly-zero bias gradient's float noise, amplified by Adam, is not a loop difference).
const MODEL: ModelConfig = resolveModelConfig({ arch: 'llama', vocab_size: 16, n_ctx: 8, n_layer: 1, n_embd: 16, n_head: 2, n_kv_head: 1, n_inner: 32 });

interface SourceOptions { batch?: number; mask?: boolean; failAt?: number; onNext?: () => void }

/** Random token rows from the trainer's rng (optionally with a random loss mask); the next token is previous + 1. */
function source(o: SourceOptions = {}): BatchSource<TokenBatch> {
  let calls = 0;
  return {
    next(rng: Rng): TokenBatch {
      calls++;
      o.onNext?.();
      if (calls === o.failAt) throw new Error(`simulated failure at call ${calls}`);
      const B = o.batch ?? 2, T = MODEL.n_ctx, V = MODEL.vocab_size;
      const x: number[] = [], y: number[] = [], m: number[] = [];
      for (let b = 0; b < B; b++) {
        const s = rng.nextInt(V);
        for (let t = 0; t < T; t++) {
          x.push((s + t) % V);
          y.push((s + t + 1) % V);
          m.push(rng.nextInt(3) === 0 ? 0 : 1);
        }
      }
      return { inputs: tf.tensor2d(x, [B, T], 'int32'), targets: tf.tensor1d(y, 'int32'), ...(o.mask ? { mask: tf.tensor1d(m, 'float32') } : {}) };
    },
    tokens: (b) => b.targets.size,
    dispose: (b) => {
      for (const t of [b.inputs, b.targets, b.mask]) t?.dispose();
    },
  };
}

function variables(params: Params): Record<string, tf.Variable> {
  const out: Record<string, tf.Variable> = {};
  for (const [k, t] of Object.entries(params)) {
    out[k] = tf.variable(t, true);
    t.dispose();
  }
  return out;
}

/** A train() job whose loss reads `trainable` + `frozen` with forward options `fwd`, as pretrain/lora build them. */
function job(trainable: Record<string, tf.Variable>, batches: BatchSource<TokenBatch>, loop: Partial<TrainLoopConfigInput>, frozen: Params = {}, fwd: ParallelOptions<TokenBatch>['forward'] = { training: true }): TrainJob<TokenBatch> {
  const all: Params = { ...frozen, ...trainable };
  return {
    stage: 'test',
    outDir: freshDir('run'),
    params: trainable,
    loss: (b) => modelLoss(all, MODEL, b, fwd),
    parallel: { model: MODEL, forward: fwd, frozen, toWire: tokenBatchToWire },
    batches,
    save: async () => {},
    optim: OptimSchema.parse({ lr: 1e-2, warmup_steps: 1 }),
    loop: TrainLoopSchema.parse({ max_steps: 4, batch_size: 2, eval_every: 0, save_every: 0, log_every: 1, seed: 11, ...loop }),
    quiet: true,
  };
}

function maxDiff(a: Params, b: Params): number {
  assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort());
  let m = 0;
  for (const k of Object.keys(a)) {
    const x = a[k]!.dataSync(), y = b[k]!.dataSync();
    for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]! - y[i]!));
  }
  return m;
}

function assertClose(got: number[], want: number[], tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) <= tol, `${what}[${i}]: got ${g}, want ${want[i]} (tol ${tol})`));
}

async function noLiveWorkers(): Promise<void> {
  for (let i = 0; i < 50 && liveWorkers() > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(liveWorkers(), 0, 'worker threads left running');
}

describe('data-parallel train()', () => {
  test('workers 2 × grad_accum 1 equals workers 1 × grad_accum 2 (losses, weights); no main-thread leak', async () => {
    const pa = variables(initParams(MODEL, 3)), pb = variables(initParams(MODEL, 3));
    const ra = await train(job(pa, source(), { grad_accum: 2, workers: 1 }));
    const counts: number[] = [];
    const before = tf.memory().numTensors;
    const rb = await train(job(pb, source({ onNext: () => counts.push(tf.memory().numTensors) }), { grad_accum: 1, workers: 2 }));
    assertClose(rb.losses, ra.losses, 1e-5, 'losses');
    assert.equal(rb.tokensSeen, ra.tokensSeen);
    const d = maxDiff(pa, pb);
    assert.ok(d < 1e-5, `max param diff ${d}`);
    // Both micro-batches of a step are drawn back to back, so sample the count at each step's first draw.
    const perStep = counts.filter((_, i) => i % 2 === 0);
    assert.deepEqual(perStep.slice(1), Array(perStep.length - 1).fill(perStep[1]), `tensor counts per step: ${perStep.join(',')}`);
    assert.equal(tf.memory().numTensors, before, 'tensors after the run');
    const init = initParams(MODEL, 3);
    assert.ok(maxDiff(pa, init) > 1e-2, 'weights moved');
    disposeParams(init);
    await noLiveWorkers();
    disposeParams(pa);
    disposeParams(pb);
  });

  test('LoRA (frozen base in the workers, masked loss): workers 2 × grad_accum 2 equals workers 1 × grad_accum 4', async () => {
    const acfg = { r: 2, alpha: 4, dropout: 0, target_modules: ['q_proj', 'v_proj'] };
    const fwd = { loraScale: loraScale(acfg), loraDropout: 0, freezeBase: true, training: true };
    const base = initParams(MODEL, 5);
    const aa = variables(initLora(MODEL, acfg, 9)), ab = variables(initLora(MODEL, acfg, 9));
    const ra = await train(job(aa, source({ mask: true }), { grad_accum: 4, workers: 1 }, base, fwd));
    const rb = await train(job(ab, source({ mask: true }), { grad_accum: 2, workers: 2 }, base, fwd));
    assertClose(rb.losses, ra.losses, 1e-5, 'losses');
    const d = maxDiff(aa, ab);
    assert.ok(d < 1e-5, `max adapter diff ${d}`);
    const init = initLora(MODEL, acfg, 9);
    assert.ok(maxDiff(aa, init) > 1e-3, 'adapter moved');
    disposeParams(init);
    await noLiveWorkers();
    disposeParams(aa);
    disposeParams(ab);
    disposeParams(base);
  });

  test('a failing run rejects and leaves no worker threads; a worker error is one clear line', async () => {
    const p = variables(initParams(MODEL, 1));
    // Draw 3 = step 2's first micro-batch.
    await assert.rejects(train(job(p, source({ failAt: 3 }), { workers: 2 })), /simulated failure at call 3/);
    await noLiveWorkers();
    // A batch the worker cannot use (wrong shape) fails there; the error names the worker.
    const bad = job(p, source(), { workers: 2 });
    bad.parallel = { ...bad.parallel!, toWire: (b) => ({ ...tokenBatchToWire(b), inputs: { shape: [3, 5], data: new Int32Array(4) } }) };
    await assert.rejects(train(bad), (err: Error) => /^data-parallel worker 1: /.test(err.message) && !err.message.includes('\n'));
    await noLiveWorkers();
    disposeParams(p);
  });
});
