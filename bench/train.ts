/**
 * Training throughput benchmark: tokens/s and peak memory of full training steps (forward, backward,
 * AdamW) through the real trainer loop, for two model sizes, with our hand-written kernels and with
 * tfjs's reference gradients; plus raw matmul GFLOP/s per backend.
 *
 *   node --import tsx bench/train.ts [--backend wasm] [--steps 8] [--workers N] [--only small|large] [--skip-reference] [--json]
 *
 * --workers N: data-parallel replicas (main thread + N−1 worker threads; each step then trains N micro-batches).
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type BackendName, initBackend } from '../src/backend/index.js';
import { type LmBatch, lmBatchSource } from '../src/data/shards.js';
import { type ModelConfig, countParams, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { batchMatMul, setReferenceKernels } from '../src/model/kernels.js';
import { tokenBatchToWire } from '../src/train/parallel.js';
import { lmLoss } from '../src/train/pretrain.js';
import { train } from '../src/train/trainer.js';
import { Rng } from '../src/util/rng.js';

const { values: args } = parseArgs({
  options: { backend: { type: 'string', default: 'wasm' }, steps: { type: 'string', default: '8' }, json: { type: 'boolean', default: false }, 'skip-reference': { type: 'boolean', default: false }, workers: { type: 'string', default: '1' }, only: { type: 'string' } },
});
const STEPS = Number(args.steps);
const WORKERS = Number(args.workers);

const CONFIGS: { name: string; model: ModelConfig; batch: number }[] = [
  { name: 'small (ctx 64, 4L, d128, 4h, b8)', batch: 8, model: resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 64, n_layer: 4, n_embd: 128, n_head: 4 }) },
  { name: 'large (ctx 256, 6L, d384, 6h, b4)', batch: 4, model: resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6 }) },
];

interface Row { config: string; kernels: string; params: number; tokens_per_s: number; step_ms: number; peak_rss_mb: number; live_tensor_mb: number }

async function benchTraining(name: string, model: ModelConfig, batch: number, kernels: 'ours' | 'reference'): Promise<Row> {
  setReferenceKernels(kernels === 'reference');
  const out = mkdtempSync(join(tmpdir(), 'llmctl-bench-'));
  const params: Record<string, tf.Variable> = {};
  for (const [k, t] of Object.entries(initParams(model, 1))) {
    params[k] = tf.variable(t);
    t.dispose();
  }
  // Random tokens: throughput does not depend on the text.
  const rng = new Rng(7);
  const tokens = Uint16Array.from({ length: 200_000 }, () => rng.nextInt(model.vocab_size));
  const warmup = 2;
  let seconds = 0, counted = 0, peakRss = 0, liveTensor = 0;
  await train<LmBatch>({
    stage: 'bench', outDir: out, params, quiet: true,
    loss: (b) => lmLoss(params, model, b, true),
    parallel: { model, forward: { training: true }, toWire: tokenBatchToWire },
    batches: lmBatchSource(tokens, batch, model.n_ctx),
    save: async () => {}, // the benchmark measures steps, not disk
    optim: { lr: 1e-3, min_lr: 1e-4, weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, grad_clip: 1, warmup_steps: 0, schedule: 'cosine' },
    loop: { max_steps: warmup + STEPS, batch_size: batch, grad_accum: 1, eval_every: 0, eval_batches: 1, save_every: 0, log_every: 1000, seed: 1, workers: WORKERS },
    onStep: ({ step, seconds: s }) => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
      liveTensor = Math.max(liveTensor, tf.memory().numBytes); // between steps: weights, AdamW moments
      if (step > warmup) {
        seconds += s;
        counted += 1;
      }
    },
  });
  for (const v of Object.values(params)) v.dispose();
  rmSync(out, { recursive: true, force: true });
  setReferenceKernels(false);
  const stepMs = (seconds / counted) * 1000;
  return { config: name, kernels, params: countParams(model), tokens_per_s: Math.round((WORKERS * batch * model.n_ctx) / (stepMs / 1000)), step_ms: Math.round(stepMs), peak_rss_mb: Math.round(peakRss / 2 ** 20), live_tensor_mb: Math.round(liveTensor / 2 ** 20) };
}

function gflops(f: () => tf.Tensor, flops: number, reps = 10): number {
  f().dispose();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    const r = f();
    r.dataSync();
    r.dispose();
  }
  return flops / (((performance.now() - t0) / reps) / 1000) / 1e9;
}

function benchMatmul(reps: number): Record<string, number> {
  const [M, K, N] = [512, 384, 1536];
  const a = tf.randomNormal([M, K]), b = tf.randomNormal([K, N]), bT = tf.randomNormal([N, K]), aT = tf.randomNormal([K, M]);
  const q = tf.randomNormal([24, 256, 64]) as tf.Tensor3D, kT = tf.randomNormal([24, 64, 256]) as tf.Tensor3D;
  const res = {
    'matmul 512x384x1536': gflops(() => tf.matMul(a, b), 2 * M * K * N, reps),
    'matmul transposeB': gflops(() => tf.matMul(a, bT, false, true), 2 * M * K * N, Math.min(reps, 3)),
    'matmul transposeA': gflops(() => tf.matMul(aT, b, true, false), 2 * M * K * N, Math.min(reps, 3)),
    'explicit transpose + matmul': gflops(() => tf.tidy(() => tf.matMul(a, tf.transpose(bT))), 2 * M * K * N, reps),
    'batched 24x256x64x256': gflops(() => tf.matMul(q, kT), 2 * 24 * 256 * 64 * 256, reps),
    'batched, ours (depthwise conv on wasm)': gflops(() => batchMatMul(q, kT), 2 * 24 * 256 * 64 * 256, reps),
  };
  for (const t of [a, b, bT, aT, q, kT]) t.dispose();
  return res;
}

const backend = await initBackend(args.backend as BackendName);
const rows: Row[] = [];
for (const c of CONFIGS.filter((c) => !args.only || c.name.startsWith(args.only))) {
  rows.push(await benchTraining(c.name, c.model, c.batch, 'ours'));
  if (!args['skip-reference']) rows.push(await benchTraining(c.name, c.model, c.batch, 'reference'));
}
// Raw matmul speed on every backend this install has (the training rows above use the selected one).
const matmul: Record<string, Record<string, number>> = {};
for (const name of ['tensorflow', 'wasm', 'cpu']) {
  if (!tf.findBackendFactory(name)) continue;
  try {
    if (!(await tf.setBackend(name))) continue;
  } catch {
    continue;
  }
  if (name === 'cpu') (tf.backend() as unknown as { firstUse: boolean }).firstUse = false; // no tfjs-node banner
  matmul[name] = benchMatmul(name === 'cpu' ? 1 : 10);
}
if (args.json) {
  console.log(JSON.stringify({ backend: backend.name, steps: STEPS, training: rows, matmul_gflops: matmul }));
} else {
  console.log(`backend: ${backend.name} (${backend.detail}); ${STEPS} timed steps after 2 warm-up steps; workers ${WORKERS}; node ${process.version}`);
  console.table(rows);
  console.log('matmul GFLOP/s per backend:');
  const table: Record<string, Record<string, number>> = {};
  for (const [be, res] of Object.entries(matmul)) for (const [k, v] of Object.entries(res)) (table[k] ??= {})[be] = Number(v.toFixed(2));
  console.table(table);
}
