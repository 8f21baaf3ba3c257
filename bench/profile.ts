/**
 * Kernel profile of one training step and one decoded token: kernel count and wall time per kernel name.
 *
 *   node --import tsx bench/profile.ts [--config small|large] [--steps 5] [--decode]
 */
import * as tf from '@tensorflow/tfjs-core';
import { parseArgs } from 'node:util';
import { initBackend } from '../src/backend/index.js';
import { type Params, emptyCache, disposeCache, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { crossEntropy } from '../src/train/losses.js';
import { AdamW, clipGradNorm } from '../src/train/adamw.js';
import { STORIES_BIN, TOK512_PATH } from '../test/paths.js';

const { values: args } = parseArgs({ options: { config: { type: 'string', default: 'small' }, decode: { type: 'boolean', default: false }, steps: { type: 'string', default: '5' } } });
const info = await initBackend('wasm');
console.log(info.detail);

function table(kernels: { name: string; kernelTimeMs: unknown }[], label: string, ms: number) {
  const by = new Map<string, { n: number; ms: number }>();
  for (const k of kernels) {
    const e = by.get(k.name) ?? { n: 0, ms: 0 };
    e.n += 1;
    e.ms += typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    by.set(k.name, e);
  }
  console.log(`${label}: ${kernels.length} kernels, ${ms.toFixed(1)} ms wall`);
  console.table([...by.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 25).map(([name, e]) => ({ name, n: e.n, ms: Number(e.ms.toFixed(2)) })));
}

if (!args.decode) {
  const c = args.config === 'large'
    ? resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6 })
    : resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 64, n_layer: 4, n_embd: 128, n_head: 4 });
  const B = args.config === 'large' ? 4 : 8, T = c.n_ctx;
  const params: Record<string, tf.Variable> = {};
  for (const [k, t] of Object.entries(initParams(c, 1))) params[k] = tf.variable(t);
  const opt = new AdamW(params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
  const tokens = tf.tensor2d(Int32Array.from({ length: B * T }, (_, i) => (i * 7) % c.vocab_size), [B, T], 'int32');
  const targets = tf.tensor1d(Int32Array.from({ length: B * T }, (_, i) => (i * 3) % c.vocab_size), 'int32');
  const step = () => {
    const { value, grads } = tf.variableGrads(() => crossEntropy(tf.reshape(forward(params as Params, c, tokens, { training: true }).logits, [B * T, c.vocab_size]) as tf.Tensor2D, targets));
    value.dataSync();
    value.dispose();
    const named = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, grads[v.name]!]));
    clipGradNorm(named, 1);
    opt.apply(named, 1e-3);
  };
  for (let i = 0; i < 3; i++) step();
  const t0 = performance.now();
  const prof = await tf.profile(step);
  table(prof.kernels, `train step ${args.config}`, performance.now() - t0);
  const t1 = performance.now(), c1 = process.cpuUsage();
  const n = Number(args.steps);
  for (let i = 0; i < n; i++) step();
  const cpu = process.cpuUsage(c1);
  console.log(`unprofiled step: ${((performance.now() - t1) / n).toFixed(1)} ms wall, ${((cpu.user + cpu.system) / 1000 / n).toFixed(1)} ms cpu`);
} else {
  const model = importLlama2c(STORIES_BIN, TOK512_PATH);
  const cache = emptyCache(model.config);
  const feed = (ids: number[]) => {
    const input = tf.tensor2d([ids], [1, ids.length], 'int32');
    const { logits } = forward(model.params as Params, model.config, input, { cache });
    const row = tf.slice(logits, [0, ids.length - 1, 0], [1, 1, model.config.vocab_size]);
    row.dataSync();
    tf.dispose([input, logits, row]);
  };
  feed([1, 403, 407]);
  for (let i = 0; i < 100; i++) feed([42]);
  const t0 = performance.now();
  const prof = await tf.profile(() => feed([42]));
  table(prof.kernels, 'decode token at position 104', performance.now() - t0);
  const t1 = performance.now(), c1 = process.cpuUsage();
  for (let i = 0; i < 100; i++) feed([42]);
  const cpu = process.cpuUsage(c1);
  console.log(`unprofiled token: ${((performance.now() - t1) / 100).toFixed(3)} ms wall, ${((cpu.user + cpu.system) / 1000 / 100).toFixed(3)} ms cpu`);
  disposeCache(cache);
}
