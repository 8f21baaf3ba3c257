/**
 * One serving step through the model runner (src/serve/model-runner.ts), without HTTP or sampling: the time of
 * a batched decode step (B sequences, one token each, at position 32) and of prompt steps (B sequences × T
 * tokens), on the kernels of this build. Shows what a batched step costs against a single-sequence one, i.e.
 * the ceiling of continuous batching's gain.
 *
 *   node --import tsx bench/engine-step.ts [--checkpoint runs/pretrain] [--shapes 1x1,16x1,32x1,4x16,16x16] [--reps 5]
 *   LLMCTL_THREADS=1 node --import tsx bench/engine-step.ts      # one thread
 */
import { initBackend } from '../src/backend/index.js';
import { nativeStatus } from '../src/backend/native.js';
import { disposeParams, loadCheckpoint } from '../src/checkpoint/model.js';
import { ModelRunner, type RunSegment } from '../src/serve/model-runner.js';
import { KvPool } from '../src/serve/paged-attention.js';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const CHECKPOINT = args.get('checkpoint') ?? 'runs/pretrain';
const SHAPES = (args.get('shapes') ?? '1x1,16x1,32x1,4x16,16x16').split(',').map((s) => s.split('x').map(Number) as [number, number]);
const REPS = Number(args.get('reps') ?? 5);

await initBackend('wasm');
const model = loadCheckpoint(CHECKPOINT);
const { config } = model;
const blockSize = 16, perSeq = Math.ceil(config.n_ctx / blockSize);
const maxB = Math.max(...SHAPES.map(([b]) => b));
const pool = new KvPool(config, perSeq * maxB, blockSize);
const runner = new ModelRunner(config, new Map([['', { params: model.params }]]), pool);
console.log(`# engine step: ${CHECKPOINT} (${config.n_layer} layers, d ${config.n_embd}, ctx ${config.n_ctx}), ${nativeStatus()}\n`);
console.log('| sequences × tokens | rows | step (best of reps) | per row |\n| --- | --- | --- | --- |');
const single: number[] = [];
for (const [B, T] of SHAPES) {
  const start = T === 1 ? Math.min(32, config.n_ctx - 1) : 0;
  const segs: RunSegment[] = Array.from({ length: B }, (_, i) => ({
    blockTable: Array.from({ length: perSeq }, (_, j) => i * perSeq + j), start, count: T,
    tokens: Array.from({ length: T }, (_, t) => (7 * i + t) % config.vocab_size), variant: '', sample: true,
  }));
  const iters = Math.max(3, Math.round(20_000 / (B * T + 20)));
  for (let i = 0; i < Math.ceil(iters / 4); i++) runner.run(segs); // warm-up
  const times: number[] = [];
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) runner.run(segs);
    times.push((performance.now() - t0) / iters);
  }
  const best = Math.min(...times);
  if (B * T === 1) single.push(best);
  console.log(`| ${B} × ${T} | ${B * T} | ${(best * 1000).toFixed(0)} µs | ${((best * 1000) / (B * T)).toFixed(1)} µs${single[0] && B * T > 1 ? ` (${((single[0] * B * T) / best).toFixed(1)}x the rows/s of one)` : ''} |`);
}
disposeParams(model.params);
