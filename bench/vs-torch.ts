/**
 * llmctl against PyTorch on this CPU, side by side in one invocation: each workload runs here and then in
 * bench/reference_torch.py (same model, parameter count and work), alternating for --rounds rounds, so
 * both see the same machine load. Prints ranges and the ratio of medians, for wall-clock throughput and
 * for throughput per CPU-second (the process's user+system time: on a machine shared with other jobs,
 * wall time measures the neighbours as much as the code; CPU time does not, but it cannot show a
 * two-thread speed-up).
 *
 *   node --import tsx bench/vs-torch.ts [--rounds 3] [--only train|decode|train-small|...] [--steps 6] [--tokens 200] [--json]
 *
 * PyTorch comes from Debian (apt-get install python3-torch); without it only llmctl's figures print.
 * "1 core" runs llmctl's native kernels on 1 thread and torch.set_num_threads(1); "2 cores" uses 2 of each.
 * --fallback also runs llmctl with the native kernels switched off (tfjs's WASM kernels: the path without the
 * addon, i.e. before it), in the same rounds.
 */
import * as tf from '@tensorflow/tfjs-core';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { initBackend } from '../src/backend/index.js';
import { nativeKernels, setNativeKernels, setNativeThreads } from '../src/backend/native.js';
import { disposeParams } from '../src/checkpoint/model.js';
import { type LanguageModel, generate } from '../src/model/generate.js';
import { type ModelConfig, type Params, countParams, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { AdamW, clipGradNorm } from '../src/train/adamw.js';
import { crossEntropy } from '../src/train/losses.js';
import { Rng } from '../src/util/rng.js';
import { STORIES_BIN, TOK512_PATH } from '../test/paths.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' }, only: { type: 'string' }, steps: { type: 'string', default: '6' },
    tokens: { type: 'string', default: '200' }, json: { type: 'boolean', default: false }, python: { type: 'string' },
    'openblas-coretype': { type: 'string', default: 'SkylakeX' }, fallback: { type: 'boolean', default: false },
  },
});
const ROUNDS = Number(args.rounds), STEPS = Number(args.steps), TOKENS = Number(args.tokens);
const REFERENCE = fileURLToPath(new URL('./reference_torch.py', import.meta.url));

interface Figures { tokens_per_s: number; cpu_tokens_per_s: number; ttft_ms?: number; params?: number }
interface Workload { name: string; torch: string; threads: number; ours(): Figures }

const SMALL = resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 64, n_layer: 4, n_embd: 128, n_head: 4 });
const LARGE = resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6 });
const DEMO = resolveModelConfig({ arch: 'gpt2', vocab_size: 512, n_ctx: 64, n_layer: 4, n_embd: 128, n_head: 4 }); // configs/pretrain.yaml

/** Full training steps (forward, backward, clip 1.0, AdamW), as the trainer runs them, on random tokens. */
function trainOurs(c: ModelConfig, batch: number, threads: number): Figures {
  setNativeThreads(threads);
  const params: Record<string, tf.Variable> = {};
  for (const [k, t] of Object.entries(initParams(c, 1))) params[k] = tf.variable(t, true, `${k}#bench${Math.random()}`);
  const opt = new AdamW(params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
  const rng = new Rng(1);
  const data = Int32Array.from({ length: 200_000 }, () => rng.nextInt(c.vocab_size));
  const names = new Map(Object.entries(params).map(([k, v]) => [v.name, k]));
  const step = () => {
    const x = new Int32Array(batch * c.n_ctx), y = new Int32Array(batch * c.n_ctx);
    for (let b = 0; b < batch; b++) {
      const i = rng.nextInt(data.length - c.n_ctx - 1);
      x.set(data.subarray(i, i + c.n_ctx), b * c.n_ctx);
      y.set(data.subarray(i + 1, i + c.n_ctx + 1), b * c.n_ctx);
    }
    const xt = tf.tensor2d(x, [batch, c.n_ctx], 'int32'), yt = tf.tensor1d(y, 'int32');
    const { value, grads } = tf.variableGrads(() =>
      crossEntropy(tf.reshape(forward(params as Params, c, xt, { training: true }).logits, [-1, c.vocab_size]) as tf.Tensor2D, yt));
    value.dataSync();
    tf.dispose([value, xt, yt]);
    const named = Object.fromEntries(Object.entries(grads).map(([k, g]) => [names.get(k)!, g]));
    clipGradNorm(named, 1);
    opt.apply(named, 1e-3);
  };
  for (let i = 0; i < 2; i++) step();
  const t0 = performance.now(), c0 = process.cpuUsage();
  for (let i = 0; i < STEPS; i++) step();
  const wall = (performance.now() - t0) / 1000, cpu = cpuSeconds(c0);
  opt.dispose();
  tf.dispose(Object.values(params));
  const tokens = STEPS * batch * c.n_ctx;
  return { tokens_per_s: tokens / wall, cpu_tokens_per_s: tokens / cpu, params: countParams(c) };
}

function cpuSeconds(since: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1e6;
}

/** Greedy decoding through generate() (the path every stage uses), restarting from the prompt until TOKENS. */
function decodeOurs(model: LanguageModel, prompt: number[], perRun: number): Figures {
  setNativeThreads(1);
  const greedy = { stop: [], temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };
  generate(model, prompt, { ...greedy, max_tokens: 20 }); // warm-up
  let produced = 0, wall = 0, cpu = 0;
  const ttfts: number[] = [];
  while (produced < TOKENS) {
    const c0 = process.cpuUsage();
    const g = generate(model, prompt, { ...greedy, max_tokens: Math.min(perRun, TOKENS - produced + 1) });
    const used = cpuSeconds(c0);
    if (g.ids.length < 2) throw new Error('the model stopped at once; pick another prompt');
    ttfts.push(g.ttftMs);
    produced += g.ids.length - 1;
    wall += (g.ids.length - 1) / g.tokensPerSecond;
    cpu += used * ((g.ids.length - 1) / g.ids.length); // the prefill's share left out, roughly
  }
  ttfts.sort((a, b) => a - b);
  return { tokens_per_s: produced / wall, cpu_tokens_per_s: produced / cpu, ttft_ms: ttfts[Math.floor(ttfts.length / 2)]! };
}

const info = await initBackend('wasm');
let stories: LanguageModel | undefined, demo: LanguageModel | undefined;
const storiesModel = () => (stories ??= importLlama2c(STORIES_BIN, TOK512_PATH));
const demoModel = () => (demo ??= { params: initParams(DEMO, 1), config: DEMO, tokenizer: storiesModel().tokenizer });

const WORKLOADS: Workload[] = [
  { name: 'train small (0.83M, ctx 64, batch 8), 1 core', torch: 'train-small', threads: 1, ours: () => trainOurs(SMALL, 8, 1) },
  { name: 'train small, 2 cores', torch: 'train-small', threads: 2, ours: () => trainOurs(SMALL, 8, 2) },
  { name: 'train large (10.8M, ctx 256, batch 4), 1 core', torch: 'train-large', threads: 1, ours: () => trainOurs(LARGE, 4, 1) },
  { name: 'train large, 2 cores', torch: 'train-large', threads: 2, ours: () => trainOurs(LARGE, 4, 2) },
  // The 5-token prompt "<s> Once upon a time" as llama2.c's tokenizer encodes it; the torch side uses the same ids.
  { name: 'greedy decode stories260K, batch 1', torch: 'decode-stories', threads: 1, ours: () => decodeOurs(storiesModel(), [1, 403, 407, 261, 378], 10_000) },
  { name: 'greedy decode, demo model shape', torch: 'decode-demo', threads: 1, ours: () => decodeOurs(demoModel(), [1, 2, 3, 4], 61) },
];

// Debian's OpenBLAS 0.3.21 (under Debian's torch) only uses AVX-512 when told the core type; the machine's
// environment may pin an older one. The reference gets its fastest setting (--openblas-coretype '' keeps the environment's).
// OMP_WAIT_POLICY=PASSIVE: with two threads on a busy machine, OpenMP's spinning workers collapse torch's
// throughput ~50x (measured: 158 vs 7,246 tok/s); passive waiting is its fair setting here.
const torchEnv: NodeJS.ProcessEnv = { OMP_WAIT_POLICY: 'PASSIVE', ...process.env };
if (args['openblas-coretype']) {
  torchEnv.OPENBLAS_CORETYPE = args['openblas-coretype'];
  delete torchEnv.OPENBLAS_L2_SIZE;
}
// pyenv's python3 may shadow Debian's, which is the one python3-torch installs into.
const python = [args.python, 'python3', '/usr/bin/python3'].find((p) => p && spawnSync(p, ['-c', 'import torch'], { env: torchEnv }).status === 0);
const torchVersion = python ? spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', env: torchEnv }).stdout.trim() : undefined;

function torchRun(w: Workload): Figures | undefined {
  if (!torchVersion) return undefined;
  const r = spawnSync(python!, [REFERENCE, '--workload', w.torch, '--threads', String(w.threads), '--steps', String(STEPS), '--tokens', String(TOKENS)], {
    encoding: 'utf8', env: { ...torchEnv, OPENBLAS_NUM_THREADS: String(w.threads), OMP_NUM_THREADS: String(w.threads) },
  });
  if (r.status !== 0) throw new Error(`reference_torch.py failed: ${r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Figures;
}

const selected = WORKLOADS.filter((w) => !args.only || w.torch.startsWith(args.only) || w.name.startsWith(args.only));
const results = new Map<string, { ours: Figures[]; torch: Figures[]; wasm: Figures[] }>(selected.map((w) => [w.name, { ours: [], torch: [], wasm: [] }]));
for (let round = 0; round < ROUNDS; round++) {
  for (const w of selected) {
    const r = results.get(w.name)!;
    r.ours.push(w.ours());
    if (args.fallback && nativeKernels()) {
      setNativeKernels(false);
      r.wasm.push(w.ours());
      setNativeKernels(true);
    }
    const t = torchRun(w);
    if (t) r.torch.push(t);
    if (!args.json) process.stderr.write(`round ${round + 1}/${ROUNDS}: ${w.name} done\n`);
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const range = (xs: number[], digits = 0) => {
  const lo = Math.min(...xs), hi = Math.max(...xs);
  const f = (x: number) => x.toLocaleString('en-US', { maximumFractionDigits: digits });
  return xs.length ? (lo === hi ? f(lo) : `${f(lo)}–${f(hi)}`) : '-';
};
const rows = selected.map((w) => {
  const { ours, torch, wasm } = results.get(w.name)!;
  const wall = (f: Figures[]) => f.map((x) => x.tokens_per_s), cpu = (f: Figures[]) => f.map((x) => x.cpu_tokens_per_s);
  const ratio = (a: number[], b: number[]) => (b.length ? Number((median(a) / median(b)).toFixed(2)) : null);
  const ttft = ours[0]?.ttft_ms !== undefined;
  return {
    workload: w.name,
    'llmctl tok/s': range(wall(ours)),
    'torch tok/s': range(wall(torch)),
    ratio: ratio(wall(ours), wall(torch)),
    'llmctl tok/cpu-s': range(cpu(ours)),
    'torch tok/cpu-s': range(cpu(torch)),
    'cpu ratio': ratio(cpu(ours), cpu(torch)),
    ...(wasm.length ? { 'wasm-only tok/s': range(wall(wasm)), 'wasm-only ratio': ratio(wall(wasm), wall(torch)) } : {}),
    ...(ttft ? { 'ttft ms (llmctl / torch)': `${range(ours.map((x) => x.ttft_ms!), 2)} / ${torch.length ? range(torch.map((x) => x.ttft_ms!), 2) : '-'}` } : {}),
  };
});
if (args.json) {
  console.log(JSON.stringify({ backend: info.detail, native: nativeKernels(), torch: torchVersion ?? null, rounds: ROUNDS, results: Object.fromEntries(results), rows }));
} else {
  const blas = `${args['openblas-coretype'] ? `, OPENBLAS_CORETYPE=${args['openblas-coretype']}` : ''}, OMP_WAIT_POLICY=${torchEnv.OMP_WAIT_POLICY}`;
  console.log(`llmctl: ${info.detail}; PyTorch: ${torchVersion ? torchVersion + blas : 'not installed (apt-get install python3-torch)'}; ${ROUNDS} interleaved rounds; node ${process.version}`);
  console.table(rows);
}
if (stories) disposeParams(stories.params);
if (demo) disposeParams(demo.params);
