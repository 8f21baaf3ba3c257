/**
 * Fine-tuning benchmark: step time and trainable parameters of full SFT vs LoRA on the same model,
 * through the real trainer loop and SFT loss (masked cross-entropy on padded, masked batches).
 * "lora (dW computed)" runs LoRA without `freezeBase`, i.e. the kernels still compute the base weights'
 * gradients and throw them away: it shows what that flag buys.
 *
 *   node --import tsx bench/finetune.ts [--backend wasm] [--steps 5] [--json] [--only small|large]
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type BackendName, initBackend } from '../src/backend/index.js';
import { type SftBatch, type SftExample, sftBatchSource } from '../src/data/sft.js';
import { type ForwardOptions, type ModelConfig, type Params, countParams, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { initLora, loraScale } from '../src/model/lora.js';
import { sftLoss } from '../src/train/sft.js';
import { train } from '../src/train/trainer.js';
import { Rng } from '../src/util/rng.js';

const { values: args } = parseArgs({
  options: { backend: { type: 'string', default: 'wasm' }, steps: { type: 'string', default: '5' }, json: { type: 'boolean', default: false }, only: { type: 'string' } },
});
const STEPS = Number(args.steps);
const WARMUP = 1;

const CONFIGS: { name: string; model: ModelConfig; batch: number }[] = [
  { name: 'small (ctx 64, 4L, d128, 4h, b8)', batch: 8, model: resolveModelConfig({ arch: 'gpt2', vocab_size: 512, n_ctx: 64, n_layer: 4, n_embd: 128, n_head: 4 }) },
  { name: 'large (ctx 256, 6L, d384, 6h, b4)', batch: 4, model: resolveModelConfig({ arch: 'gpt2', vocab_size: 512, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6 }) },
].filter((c) => !args.only || c.name.startsWith(args.only));

const LORA = { r: 8, alpha: 16, dropout: 0.05, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj'] };

type Mode = 'full sft' | 'lora' | 'lora (dW computed)';
interface Row { config: string; mode: Mode; trainable_params: number; trainable_pct: number; step_ms: number; min_step_ms: number; tokens_per_s: number }

/** Full-length examples (n_ctx + 1 tokens) with the second half trained, like a prompt + response. */
function examples(model: ModelConfig, n: number): SftExample[] {
  const rng = new Rng(7);
  return Array.from({ length: n }, (_, i) => {
    const len = model.n_ctx + 1;
    return { ids: Array.from({ length: len }, () => rng.nextInt(model.vocab_size)), trainMask: Array.from({ length: len }, (_, t) => (t >= len / 2 ? 1 : 0)), line: i + 1 };
  });
}

async function bench(name: string, model: ModelConfig, batch: number, mode: Mode): Promise<Row> {
  const out = mkdtempSync(join(tmpdir(), 'llmctl-bench-ft-'));
  const base = initParams(model, 1);
  let trainable: Record<string, tf.Variable>;
  let all: Params;
  let fwd: ForwardOptions;
  if (mode === 'full sft') {
    trainable = Object.fromEntries(Object.entries(base).map(([k, t]) => [k, tf.variable(t)]));
    Object.values(base).forEach((t) => t.dispose());
    all = trainable;
    fwd = { training: true };
  } else {
    trainable = Object.fromEntries(Object.entries(initLora(model, LORA, 1)).map(([k, t]) => [k, tf.variable(t)]));
    all = { ...base, ...trainable };
    fwd = { training: true, loraScale: loraScale(LORA), loraDropout: LORA.dropout, freezeBase: mode === 'lora' };
  }
  const times: number[] = [];
  await train<SftBatch>({
    stage: 'bench', outDir: out, params: trainable, quiet: true,
    loss: (b) => sftLoss(all, model, b, fwd),
    batches: sftBatchSource(examples(model, 64), batch, 0, 1),
    save: async () => {},
    optim: { lr: 1e-3, min_lr: 1e-4, weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, grad_clip: 1, warmup_steps: 0, schedule: 'cosine' },
    loop: { max_steps: WARMUP + STEPS, batch_size: batch, grad_accum: 1, eval_every: 0, eval_batches: 1, save_every: 0, log_every: 1000, seed: 1, workers: 1 },
    onStep: ({ step, seconds: s }) => {
      if (step > WARMUP) times.push(s * 1000);
    },
  });
  const n = Object.values(trainable).reduce((a, v) => a + v.size, 0);
  for (const v of Object.values(trainable)) v.dispose();
  if (mode !== 'full sft') Object.values(base).forEach((t) => t.dispose());
  rmSync(out, { recursive: true, force: true });
  const sorted = [...times].sort((a, b) => a - b);
  const stepMs = sorted[Math.floor((sorted.length - 1) / 2)]!; // median: robust to a busy machine
  return { config: name, mode, trainable_params: n, trainable_pct: Number(((100 * n) / countParams(model)).toFixed(2)), step_ms: Math.round(stepMs), min_step_ms: Math.round(sorted[0]!), tokens_per_s: Math.round((batch * model.n_ctx) / (stepMs / 1000)) };
}

const backend = await initBackend(args.backend as BackendName);
const rows: Row[] = [];
for (const c of CONFIGS) {
  for (const mode of ['full sft', 'lora', 'lora (dW computed)'] as Mode[]) rows.push(await bench(c.name, c.model, c.batch, mode));
}
if (args.json) {
  console.log(JSON.stringify({ backend: backend.name, steps: STEPS, lora: LORA, rows }));
} else {
  console.log(`backend: ${backend.name} (${backend.detail}); ${STEPS} timed steps after ${WARMUP} warm-up (median step_ms, and the fastest); LoRA r=${LORA.r} on ${LORA.target_modules.join(',')}; node ${process.version}`);
  console.table(rows);
  for (const c of CONFIGS) {
    const full = rows.find((r) => r.config === c.name && r.mode === 'full sft')!, lo = rows.find((r) => r.config === c.name && r.mode === 'lora')!;
    console.log(`${c.name}: LoRA step ${(full.step_ms / lo.step_ms).toFixed(2)}x faster than full SFT, ${(full.trainable_params / lo.trainable_params).toFixed(0)}x fewer trainable params`);
  }
}
