/**
 * Losses, AdamW, clipping, the LR schedule, and the shared training loop (src/train/*): hand-computed
 * numbers, learning, memory, gradient accumulation, crash + resume on the same curve, NaN handling,
 * and pretrain() end to end on shards made by prepare().
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint, loadTrainerState, saveCheckpoint } from '../src/checkpoint/model.js';
import { readManifest, readTrainerState, verifyManifestFiles } from '../src/checkpoint/manifest.js';
import { OptimSchema, TrainLoopSchema, type OptimConfigInput, type TrainLoopConfigInput } from '../src/config/schemas.js';
import { PrepareConfigSchema, PretrainConfigSchema } from '../src/config/stages.js';
import { prepare } from '../src/data/prepare.js';
import { loadSplit, readShardMeta, type LmBatch } from '../src/data/shards.js';
import { type ModelConfig, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { AdamW, clipGradNorm, learningRate } from '../src/train/adamw.js';
import { crossEntropy, tokenNll } from '../src/train/losses.js';
import { pretrain } from '../src/train/pretrain.js';
import { type BatchSource, NonFiniteLossError, type TrainJob, train } from '../src/train/trainer.js';
import { setupLogger } from '../src/util/log.js';
import type { Rng } from '../src/util/rng.js';
import { SHAKESPEARE_PATH } from './paths.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-trainer-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = (name: string) => join(TMP, `${name}-${dirCount++}`);

function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

/** |a − b| ≤ tol elementwise, with a message that shows both. */
function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    assert.ok(Math.abs(got[i]! - want[i]!) <= tol, `${what}[${i}]: got ${got[i]}, want ${want[i]} (tol ${tol})`);
  }
}

// ------------------------------------------------------------------------------------------- losses

describe('losses', () => {
  // logits [[1, 2, 3], [1, 1, 1]], targets [2, 0]:
  //   row 0: logsumexp = 3 + ln(1 + e⁻¹ + e⁻²) = 3 + ln(1.50321472) = 3.40760596 → nll = 3.40760596 − 3 = 0.40760596
  //   row 1: logsumexp = 1 + ln 3 = 2.09861229 → nll = ln 3 = 1.09861229
  //   mean = (0.40760596 + 1.09861229) / 2 = 0.75310912
  const logits = () => tf.tensor2d([[1, 2, 3], [1, 1, 1]]);
  const targets = () => tf.tensor1d([2, 0], 'int32');
  // float32 log-softmax of O(1) numbers: ~1e-7 relative error, so 1e-6 absolute.
  const TOL = 1e-6;

  test('tokenNll and crossEntropy on a hand-computed 2×3 example', () => {
    assertClose(values(tokenNll(logits(), targets())), [0.40760596, 1.09861229], TOL, 'tokenNll');
    assertClose(values(crossEntropy(logits(), targets())), [0.75310912], TOL, 'crossEntropy');
  });

  test('mask: only unmasked tokens count, divided by their number; all-masked gives 0, not NaN', () => {
    assertClose(values(crossEntropy(logits(), targets(), tf.tensor1d([1, 0]))), [0.40760596], TOL, 'mask [1,0]');
    assertClose(values(crossEntropy(logits(), targets(), tf.tensor1d([0, 1]))), [1.09861229], TOL, 'mask [0,1]');
    assertClose(values(crossEntropy(logits(), targets(), tf.tensor1d([1, 1]))), [0.75310912], TOL, 'mask [1,1]');
    assertClose(values(crossEntropy(logits(), targets(), tf.tensor1d([0, 0]))), [0], 0, 'mask [0,0]');
  });

  test('gradient of the mean cross-entropy is (softmax − onehot) / N', () => {
    // softmax row 0 = [e⁻², e⁻¹, 1] / 1.50321472 = [0.09003057, 0.24472847, 0.66524096]; row 1 = 1/3 each.
    const g = tf.grad((x: tf.Tensor) => crossEntropy(x as tf.Tensor2D, targets()))(logits());
    assertClose(values(g), [0.09003057 / 2, 0.24472847 / 2, (0.66524096 - 1) / 2, (1 / 3 - 1) / 2, 1 / 6, 1 / 6], TOL, 'dlogits');
  });
});

// ------------------------------------------------------------------------------------------ optimizer

describe('AdamW', () => {
  const cfg = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
  // Hand computation, lr 0.1, p₀ = [1, −2], g₁ = [0.5, −0.1], g₂ = [−0.3, 0.2]:
  //  step 1: m = 0.1·g₁ = [0.05, −0.01], v = 0.001·g₁² = [2.5e-4, 1e-5]; m̂ = m/0.1 = g₁, v̂ = v/0.001 = g₁²
  //          update = m̂/(√v̂ + 1e-8) = [0.99999998, −0.9999999]
  //          2-D (decayed): p = p₀·(1 − 0.1·0.1) − 0.1·update = [0.99 − 0.1, −1.98 + 0.1] = [0.89000000, −1.88000001]
  //          1-D (no decay): p = p₀ − 0.1·update = [0.90000000, −1.90000001]
  //  step 2: m = 0.9·m + 0.1·g₂ = [0.015, 0.011], v = 0.999·v + 0.001·g₂² = [3.3975e-4, 4.999e-5]
  //          bc1 = 1 − 0.81 = 0.19, bc2 = 1 − 0.998001 = 0.001999
  //          update = (m/0.19) / (√(v/0.001999) + 1e-8) = [0.19149803, 0.36610350]
  //          2-D: p = [0.89·0.99 − 0.019149803, −1.88·0.99 − 0.036610350] = [0.86195020, −1.89781036]
  //          1-D: p = [0.9 − 0.019149803, −1.9 − 0.036610350] = [0.88085020, −1.93661036]
  // float32 state and arithmetic: ~1e-7 relative on O(1) values, so 1e-6.
  const TOL = 1e-6;

  test('one and two steps: decoupled decay on 2-D params, none on 1-D, bias-corrected moments', () => {
    const w = tf.variable(tf.tensor2d([[1, -2]]), true);
    const b = tf.variable(tf.tensor1d([1, -2]), true);
    const opt = new AdamW({ w, b }, cfg);
    opt.apply({ w: tf.tensor2d([[0.5, -0.1]]), b: tf.tensor1d([0.5, -0.1]) }, 0.1);
    assertClose(values(w), [0.89, -1.88000001], TOL, 'w after 1');
    assertClose(values(b), [0.9, -1.90000001], TOL, 'b after 1');
    assertClose(values(opt.m.w!), [0.05, -0.01], 1e-8, 'm after 1');
    assertClose(values(opt.v.w!), [2.5e-4, 1e-5], 1e-10, 'v after 1');
    opt.apply({ w: tf.tensor2d([[-0.3, 0.2]]), b: tf.tensor1d([-0.3, 0.2]) }, 0.1);
    assertClose(values(w), [0.8619502, -1.89781036], TOL, 'w after 2');
    assertClose(values(b), [0.8808502, -1.93661036], TOL, 'b after 2');
    assert.equal(opt.step, 2);
    // State round trip: a fresh optimizer loaded from stateTensors() continues identically.
    const w2 = tf.variable(w.clone(), true), b2 = tf.variable(b.clone(), true);
    const opt2 = new AdamW({ w: w2, b: b2 }, cfg);
    const st = opt.stateTensors();
    opt2.loadState(Object.fromEntries(Object.entries(st).map(([k, t]) => [k, t.dataSync() as Float32Array])), opt.step);
    const g3 = [0.7, 0.05];
    opt.apply({ w: tf.tensor2d([g3]), b: tf.tensor1d(g3) }, 0.05);
    opt2.apply({ w: tf.tensor2d([g3]), b: tf.tensor1d(g3) }, 0.05);
    assertClose(values(w2), values(w), 0, 'resumed optimizer, 2-D');
    assertClose(values(b2), values(b), 0, 'resumed optimizer, 1-D');
    assert.throws(() => opt2.loadState({}, 1), /no moments for 'w'/);
    opt.dispose();
    opt2.dispose();
  });

  test('apply consumes the gradients; construct, apply, loadState and dispose leave no tensors behind', () => {
    const w = tf.variable(tf.tensor2d([[1, 2]]), true);
    const before = tf.memory().numTensors;
    const opt = new AdamW({ w }, cfg);
    assert.equal(tf.memory().numTensors, before + 2, 'exactly m and v');
    const g = tf.tensor2d([[1, 1]]);
    opt.apply({ w: g }, 0.1);
    assert.equal(g.isDisposed, true, 'gradient disposed');
    opt.loadState({ 'w.exp_avg': new Float32Array([1, 2]), 'w.exp_avg_sq': new Float32Array([3, 4]) }, 5);
    assert.deepEqual(values(opt.v.w!), [3, 4]);
    assert.equal(tf.memory().numTensors, before + 2, 'after apply and loadState');
    opt.dispose();
    assert.equal(tf.memory().numTensors, before, 'after dispose');
    w.dispose();
  });

  test('clipGradNorm scales to max_norm and returns the norm before clipping', () => {
    // grads [3, 0] and [[0, 4]]: global norm 5. Clipping to 1 scales by 1/(5 + 1e-6).
    const grads: Record<string, tf.Tensor> = { a: tf.tensor1d([3, 0]), b: tf.tensor2d([[0, 4]]) };
    assert.ok(Math.abs(clipGradNorm(grads, 1) - 5) < 1e-6, 'norm 5');
    assertClose(values(grads.a!), [0.6, 0], 1e-6, 'a clipped');
    assertClose(values(grads.b!), [0, 0.8], 1e-6, 'b clipped');
    // Below the limit (or with clipping off) nothing changes.
    const keep: Record<string, tf.Tensor> = { a: tf.tensor1d([3, 0]), b: tf.tensor2d([[0, 4]]) };
    const a0 = keep.a;
    assert.ok(Math.abs(clipGradNorm(keep, 10) - 5) < 1e-6, 'norm below limit');
    assert.equal(keep.a, a0, 'same tensor when not clipped');
    assertClose(values(keep.b!), [0, 4], 0, 'unclipped');
    assert.ok(Math.abs(clipGradNorm(keep, 0) - 5) < 1e-6, 'max_norm 0 disables clipping');
    assertClose(values(keep.a!), [3, 0], 0, 'unclipped with 0');
  });

  test('learningRate: warmup, cosine, linear and constant at specific steps', () => {
    const s = { lr: 1e-3, min_lr: 1e-4, warmup_steps: 4 };
    const at = (step: number, schedule: 'cosine' | 'linear' | 'constant') => learningRate(step, 14, { ...s, schedule });
    const near = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) < 1e-12, `${what}: ${got} vs ${want}`);
    for (const kind of ['cosine', 'linear', 'constant'] as const) {
      // Warmup: lr·(step+1)/(warmup+1) → 2e-4, 4e-4, 6e-4, 8e-4, then the peak at step 4.
      near(at(0, kind), 2e-4, `${kind} step 0`);
      near(at(3, kind), 8e-4, `${kind} step 3`);
      near(at(4, kind), 1e-3, `${kind} step 4`);
    }
    // Decay spans steps 4..14 (10 steps). Step 6: progress 0.2 → cosine coeff 0.5(1 + cos 0.2π) = 0.90450850
    near(at(6, 'cosine'), 1e-4 + 0.9045084971874737 * 9e-4, 'cosine step 6'); // 9.1405765e-4
    near(at(9, 'cosine'), 5.5e-4, 'cosine midpoint'); // coeff 0.5
    near(at(14, 'cosine'), 1e-4, 'cosine end');
    near(at(20, 'cosine'), 1e-4, 'cosine past the end stays at min_lr');
    near(at(6, 'linear'), 1e-4 + 0.8 * 9e-4, 'linear step 6'); // 8.2e-4
    near(at(14, 'linear'), 1e-4, 'linear end');
    near(at(9, 'constant'), 1e-3, 'constant');
    near(learningRate(0, 10, { ...s, warmup_steps: 0, schedule: 'cosine' }), 1e-3, 'no warmup starts at peak');
  });
});

// -------------------------------------------------------------------------------------- train() loop

/** Tiny Llama (no biases: GPT-2's k_proj bias has an exactly-zero true gradient, whose float noise
 * Adam would amplify into run-to-run differences that say nothing about the loop). */
const MODEL: ModelConfig = resolveModelConfig({ arch: 'llama', vocab_size: 16, n_ctx: 8, n_layer: 1, n_embd: 16, n_head: 2, n_kv_head: 1, n_inner: 32 });
const TOKENIZER = Tokenizer.train(['tiny corpus for a tiny tokenizer'], { vocabSize: 259 });

interface Batch extends LmBatch { poison?: boolean }

/** Sequences (s, s+1, s+2, …) mod V with random starts: the next token is always previous + 1. */
function countingBatch(starts: number[], T = MODEL.n_ctx, V = MODEL.vocab_size, poison = false): Batch {
  const x: number[] = [], y: number[] = [];
  for (const s of starts) for (let t = 0; t < T; t++) {
    x.push((s + t) % V);
    y.push((s + t + 1) % V);
  }
  return { inputs: tf.tensor2d(x, [starts.length, T], 'int32'), targets: tf.tensor1d(y, 'int32'), poison };
}

interface SourceOptions { batch?: number; failAt?: number; nanAt?: number; onNext?: (call: number) => void }

/** Batches drawn from the trainer's rng (so resume must restore it); call counting for fault injection. */
function countingSource(o: SourceOptions = {}): BatchSource<Batch> & { calls: number } {
  const src = {
    calls: 0,
    next(rng: Rng): Batch {
      src.calls++;
      o.onNext?.(src.calls);
      if (src.calls === o.failAt) throw new Error(`simulated crash at call ${src.calls}`);
      return countingBatch(Array.from({ length: o.batch ?? 4 }, () => rng.nextInt(MODEL.vocab_size)), MODEL.n_ctx, MODEL.vocab_size, src.calls === o.nanAt);
    },
    tokens: (b: Batch) => b.targets.size,
    dispose: (b: Batch) => { b.inputs.dispose(); b.targets.dispose(); },
  };
  return src;
}

function variables(params: Record<string, tf.Tensor>): Record<string, tf.Variable> {
  const out: Record<string, tf.Variable> = {};
  for (const [k, t] of Object.entries(params)) {
    out[k] = tf.variable(t, true);
    t.dispose();
  }
  return out;
}

function lossOf(params: Record<string, tf.Variable>, batch: Batch): tf.Scalar {
  return tf.tidy(() => {
    const { logits } = forward(params, MODEL, batch.inputs, { training: true });
    const l = crossEntropy(tf.reshape(logits, [-1, MODEL.vocab_size]) as tf.Tensor2D, batch.targets);
    return (batch.poison ? tf.mul(l, NaN) : l) as tf.Scalar;
  });
}

function job(outDir: string, params: Record<string, tf.Variable>, batches: BatchSource<Batch>, loop: Partial<TrainLoopConfigInput>, optim: OptimConfigInput = {}): TrainJob<Batch> {
  return {
    stage: 'test',
    outDir,
    params,
    loss: (b) => lossOf(params, b),
    batches,
    save: (payload) => saveCheckpoint(outDir, {
      config: MODEL, params, tokenizer: TOKENIZER, stage: 'test', stageConfig: { loop }, metrics: payload.metrics, trainer: payload,
    }),
    optim: OptimSchema.parse({ lr: 1e-2, warmup_steps: 2, ...optim }),
    loop: TrainLoopSchema.parse({ max_steps: 6, batch_size: 4, eval_every: 0, save_every: 0, log_every: 1, seed: 7, ...loop }),
    quiet: true,
  };
}

function snapshot(params: Record<string, tf.Tensor>): Record<string, Float32Array> {
  return Object.fromEntries(Object.entries(params).map(([k, t]) => [k, Float32Array.from(t.dataSync())]));
}

function maxParamDiff(a: Record<string, ArrayLike<number>>, b: Record<string, ArrayLike<number>>): number {
  assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort());
  let m = 0;
  for (const k of Object.keys(a)) for (let i = 0; i < a[k]!.length; i++) m = Math.max(m, Math.abs(a[k]![i]! - b[k]![i]!));
  return m;
}

function metricSteps(dir: string): { step: number; loss?: number; grad_norm?: number; val_loss?: number }[] {
  return readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number });
}

describe('train()', () => {
  test('loss falls on a learnable pattern; no tensors leak across steps or after the run', async (t) => {
    const counts: number[] = [];
    const params = variables(initParams(MODEL, 1));
    const before = tf.memory().numTensors;
    const r = await train(job(freshDir('learn'), params, countingSource({ onNext: () => counts.push(tf.memory().numTensors) }), { max_steps: 40, save_every: 15 }, { lr: 3e-2, warmup_steps: 3 }));
    assert.equal(r.step, 40);
    assert.equal(r.losses.length, 40);
    assert.equal(r.tokensSeen, 40 * 4 * MODEL.n_ctx);
    t.diagnostic(`loss ${r.losses[0]!.toFixed(3)} → ${r.finalLoss.toFixed(3)}`);
    // Uniform guessing over 16 tokens costs ln 16 = 2.77; the rule "next = previous + 1" is learnable
    // from the token embedding alone, so 40 steps at lr 3e-2 must get far below that.
    assert.ok(Math.abs(r.losses[0]! - Math.log(16)) < 0.1, `initial loss ${r.losses[0]} ≈ ln 16`);
    assert.ok(r.finalLoss < 0.5, `final loss ${r.finalLoss} (losses ${r.losses.map((l) => l.toFixed(2)).join(' ')})`);
    // Memory: the count when step k starts is the same for every k ≥ 2 (periodic saves at 15 and 30 included).
    assert.equal(counts.length, 40);
    assert.deepEqual(counts.slice(1), Array(39).fill(counts[1]), `tensor counts per step: ${counts.join(',')}`);
    // The optimizer moments are freed when train() returns.
    assert.equal(tf.memory().numTensors, before);
    disposeParams(params);
  });

  test('grad_accum=2 with batch b equals one step with batch 2b on the same data', async () => {
    // Precomputed starts, so both runs see exactly the same sequences regardless of rng use.
    const steps = [[0, 5, 9, 12], [3, 3, 14, 7], [1, 8, 2, 11], [6, 15, 4, 10]];
    const fixed = (chunks: number[][]): BatchSource<Batch> => {
      let i = 0;
      return { next: () => countingBatch(chunks[i++]!), tokens: (b) => b.targets.size, dispose: (b) => { b.inputs.dispose(); b.targets.dispose(); } };
    };
    const pa = variables(initParams(MODEL, 3)), pb = variables(initParams(MODEL, 3));
    const dirA = freshDir('acc-a'), dirB = freshDir('acc-b');
    const ra = await train(job(dirA, pa, fixed(steps), { max_steps: 4, batch_size: 4, grad_accum: 1 }));
    const rb = await train(job(dirB, pb, fixed(steps.flatMap((s) => [s.slice(0, 2), s.slice(2)])), { max_steps: 4, batch_size: 2, grad_accum: 2 }));
    // The gradient itself (not only Adam's scale-free update) must be the mean over micro-batches: the
    // logged pre-clip gradient norms agree (relative 1e-5, float32 summation order).
    const normsA = metricSteps(dirA).map((m) => m.grad_norm!), normsB = metricSteps(dirB).map((m) => m.grad_norm!);
    assert.equal(normsA.length, 4);
    assertClose(normsB.map((x, i) => x / normsA[i]!), [1, 1, 1, 1], 1e-5, 'grad_norm ratio');
    // Mean of two equal-sized half-batch means = the full-batch mean; the only differences are float32
    // summation order (~1e-7), which Adam's normalised update keeps at that scale: 1e-5.
    assertClose(rb.losses, ra.losses, 1e-5, 'losses');
    assert.equal(rb.tokensSeen, ra.tokensSeen);
    const d = maxParamDiff(snapshot(pa), snapshot(pb));
    assert.ok(d < 1e-5, `max param diff ${d}`);
    // ...and the runs did move the weights (otherwise equality would be trivial).
    const init = snapshot(initParams(MODEL, 3));
    assert.ok(maxParamDiff(init, snapshot(pa)) > 1e-2, 'weights moved');
    disposeParams(pa);
    disposeParams(pb);
  });

  test('a crash after a periodic save, then resume, continues exactly the same curve', async () => {
    // Run A: 6 steps straight, saving at 3.
    const dirA = freshDir('straight');
    const pa = variables(initParams(MODEL, 5));
    const ra = await train(job(dirA, pa, countingSource(), { max_steps: 6, save_every: 3 }));
    assert.equal(ra.losses.length, 6);

    // Run B: same start; the batch source throws when step 5 asks for its batch.
    const dirB = freshDir('crash');
    const pb = variables(initParams(MODEL, 5));
    await assert.rejects(train(job(dirB, pb, countingSource({ failAt: 5 }), { max_steps: 6, save_every: 3 })), /simulated crash at call 5/);
    disposeParams(pb);
    assert.equal(readTrainerState(dirB).step, 3, 'the step-3 checkpoint is what is on disk');
    // The log on disk is the checkpoint's: step 4 ran but its checkpoint was never saved.
    assert.deepEqual(metricSteps(dirB).map((m) => m.step), [1, 2, 3], 'metrics.jsonl ends at the checkpoint');

    // Resume from disk, exactly as pretrain --resume does.
    const ck = loadCheckpoint(dirB);
    const pr = variables(ck.params);
    const resume = loadTrainerState(dirB)!;
    const n0 = tf.memory().numTensors;
    const rr = await train({ ...job(dirB, pr, countingSource(), { max_steps: 6, save_every: 3 }), resume });
    assert.equal(tf.memory().numTensors, n0, 'loading optimizer state leaks no tensors');
    assert.equal(rr.step, 6);
    // Same float32 ops on the same values (weights and moments round-trip exactly through F32
    // safetensors, the rng state through JSON): 1e-6 leaves room only for nothing going wrong.
    assertClose(rr.losses, ra.losses.slice(3), 1e-6, 'losses of steps 4-6');
    assert.equal(rr.tokensSeen, ra.tokensSeen);
    const d = maxParamDiff(snapshot(pa), snapshot(pr));
    assert.ok(d < 1e-6, `final params differ by ${d}`);
    // The log was cut back to the checkpoint and continued: each step exactly once.
    assert.deepEqual(metricSteps(dirB).map((m) => m.step), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(readTrainerState(dirB).step, 6);
    // The final checkpoints of A and B hold the same weights.
    const fa = loadCheckpoint(dirA), fb = loadCheckpoint(dirB);
    assert.ok(maxParamDiff(snapshot(fa.params), snapshot(fb.params)) < 1e-6, 'final checkpoints equal');

    // Resuming the finished run trains nothing, rewrites nothing and reports the last loss.
    const manifestBefore = readFileSync(join(dirB, 'manifest.json'), 'utf8');
    const again = await train({ ...job(dirB, pr, countingSource({ failAt: 1 }), { max_steps: 6, save_every: 3 }), resume: loadTrainerState(dirB)! });
    assert.equal(again.step, 6);
    assert.deepEqual(again.losses, []);
    assert.equal(again.finalLoss, ra.losses[5], 'last loss comes from trainer_state.json');
    assert.equal(readFileSync(join(dirB, 'manifest.json'), 'utf8'), manifestBefore, 'checkpoint untouched');
    for (const x of [pa, pr, fa.params, fb.params]) disposeParams(x);
  });

  test('a loss that becomes NaN stops with NonFiniteLossError; the last periodic checkpoint is intact', async () => {
    const dir = freshDir('nan');
    const params = variables(initParams(MODEL, 9));
    let lastGood: Record<string, Float32Array> = {};
    const src = countingSource({ nanAt: 5, onNext: (call) => { if (call === 5) lastGood = snapshot(params); } });
    await assert.rejects(train(job(dir, params, src, { max_steps: 10, save_every: 2 })), (err: Error) => {
      assert.ok(err instanceof NonFiniteLossError, `${err.constructor.name}: ${err.message}`);
      assert.match(err.message, /non-finite loss at step 5/);
      return true;
    });
    // The bad step was not applied: in-memory weights are those from before step 5, all finite.
    assert.equal(maxParamDiff(snapshot(params), lastGood), 0);
    // On disk: the step-4 checkpoint, complete and verifiable, with finite weights.
    const state = readTrainerState(dir);
    assert.equal(state.step, 4);
    const manifest = readManifest(dir);
    await verifyManifestFiles(dir, manifest);
    const ck = loadCheckpoint(dir);
    for (const [k, t] of Object.entries(ck.params)) assert.ok(t.dataSync().every(Number.isFinite), `${k} finite`);
    assert.ok(Number.isFinite(manifest.metrics.train_loss!), 'recorded train_loss is finite');
    disposeParams(ck.params);
    disposeParams(params);
  });
});

// ----------------------------------------------------------------------------------- pretrain() e2e

describe('pretrain() end to end', () => {
  let dataDir = '';
  before(async () => {
    const text = join(TMP, 'shakespeare-30k.txt');
    writeFileSync(text, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 30_000));
    dataDir = join(TMP, 'tokens');
    const r = await prepare(PrepareConfigSchema.parse({ inputs: [text], out_dir: dataDir, tokenizer: { train: { vocab_size: 300 } }, val_fraction: 0.1 }));
    assert.equal(r.vocabSize, 300);
    const meta = readShardMeta(dataDir);
    assert.equal(meta.splits.train.tokens, r.trainTokens);
    assert.equal(loadSplit(dataDir, 'val').length, r.valTokens);
    assert.ok(r.valTokens > 0 && r.trainTokens > 5 * r.valTokens, `train ${r.trainTokens} val ${r.valTokens}`);
  });

  test('20 steps: falling loss, val loss recorded, metrics.jsonl and manifest as documented', async (t) => {
    const outDir = join(TMP, 'pretrain');
    const cfg = PretrainConfigSchema.parse({
      data: { dir: dataDir },
      model: { arch: 'gpt2', vocab_size: 300, n_ctx: 16, n_layer: 1, n_embd: 32, n_head: 2 },
      optim: { lr: 1e-2, warmup_steps: 2 },
      train: { max_steps: 20, batch_size: 8, eval_every: 10, eval_batches: 2, save_every: 10, log_every: 5 },
      out_dir: outDir,
    });
    const r = await pretrain(cfg, { quiet: true });
    assert.equal(r.step, 20);
    // From ~ln 300 = 5.70 at init; 20 steps of unigram/bigram learning take it well below.
    assert.ok(Math.abs(r.losses[0]! - Math.log(300)) < 0.2, `first loss ${r.losses[0]}`);
    assert.ok(r.finalLoss < r.losses[0]! - 0.5, `loss ${r.losses[0]} → ${r.finalLoss}`);
    const val = r.metrics.val_loss!;
    t.diagnostic(`train loss ${r.losses[0]!.toFixed(3)} → ${r.finalLoss.toFixed(3)}, val_loss ${val.toFixed(3)}`);
    assert.ok(Number.isFinite(val) && val < Math.log(300) - 0.3, `val_loss ${val}`);
    assert.ok(Math.abs(r.metrics.val_ppl! - Math.exp(val)) < 1e-9 * Math.exp(val), 'val_ppl = exp(val_loss)');

    const lines = readFileSync(join(outDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
    const train = lines.filter((l) => 'loss' in l), evals = lines.filter((l) => 'val_loss' in l);
    assert.deepEqual(train.map((l) => l.step), [5, 10, 15, 20]);
    for (const l of train) assert.ok(Number.isFinite(l.loss) && Number.isFinite(l.lr) && Number.isFinite(l.grad_norm), JSON.stringify(l));
    assertClose(train.map((l) => l.loss!), [5, 10, 15, 20].map((s) => r.losses[s - 1]!), 1e-12, 'logged losses');
    assert.deepEqual(evals.map((l) => l.step), [10, 20]);
    assert.equal(evals[1]!.val_loss, val);

    const manifest = readManifest(outDir);
    assert.equal(manifest.stage, 'pretrain');
    assert.equal(manifest.parent, null);
    assert.equal(manifest.metrics.val_loss, val);
    assert.equal(manifest.metrics.step, 20);
    assert.deepEqual(manifest.config, JSON.parse(JSON.stringify(cfg)), 'resolved config recorded');
    await verifyManifestFiles(outDir, manifest);
    assert.ok(existsSync(join(outDir, 'optimizer.safetensors')), 'resumable');
    assert.equal(readTrainerState(outDir).step, 20);
    assert.equal(readTrainerState(outDir).best_val_loss, Math.min(evals[0]!.val_loss!, val));
  });
});
