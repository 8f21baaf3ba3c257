/**
 * Quantization benchmark: for each model and method, size on disk, perplexity and its change, time to
 * quantize, greedy decode tokens/s through the one generate path (weights dequantized per layer per
 * token), and resident weight memory (bytes of the tensors the model holds).
 *
 *   node --import tsx bench/quantize.ts [--only shakespeare|stories|large] [--tokens 64] [--json]
 *
 * shakespeare: runs/pretrain (`npm run demo` or llmctl prepare + pretrain first); calibration = the first
 *   32 windows of data/tinyshakespeare.txt, perplexity on its last 8,192 tokens.
 * stories: llama2.c's stories260K (test fixture); text = data/stories260K-samples.txt (stories the float
 *   model wrote itself, seeded; no TinyStories text is shipped), calibration from its start, perplexity on its end.
 * large: a randomly initialised 6-layer d384 GPT-2 (10.8M parameters): sizes, speed and memory only
 *   (perplexity of random weights means nothing; the logit error column still compares methods).
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend } from '../src/backend/index.js';
import { MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { generate } from '../src/model/generate.js';
import { type ModelConfig, type Params, countParams, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { type QuantizeSettings, calibrationSamples, perplexity, quantizeModel, tokensOf } from '../src/quant/quantize.js';
import type { Tokenizer } from '../src/tokenizer/index.js';
import { setupLogger } from '../src/util/log.js';
import { Rng } from '../src/util/rng.js';

const { values: args } = parseArgs({ options: { only: { type: 'string' }, tokens: { type: 'string', default: '64' }, json: { type: 'boolean', default: false } } });
setupLogger('warn');
await initBackend('wasm');
const GEN = Number(args.tokens);
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-bench-quant-'));

interface Model { name: string; config: ModelConfig; params: () => Params; tokenizer: Tokenizer; calib: number[][]; evalIds: number[]; methods: Array<[string, Partial<QuantizeSettings> | null]> }

const ALL: Array<[string, Partial<QuantizeSettings> | null]> = [
  ['float32', null],
  ['int8', { method: 'int8' }],
  ['int4 RTN g128', { method: 'int4', group_size: 128 }],
  ['int4 RTN g32', { method: 'int4', group_size: 32 }],
  ['GPTQ int4 g128', { method: 'gptq', group_size: 128 }],
  ['GPTQ int4 g32', { method: 'gptq', group_size: 32 }],
  ['AWQ int4 g128', { method: 'awq', group_size: 128 }],
  ['AWQ int4 g32', { method: 'awq', group_size: 32 }],
];
const BASE: QuantizeSettings = { method: 'int8', group_size: 128, sym: true, desc_act: false, damp_percent: 0.01, block_size: 128, awq_grid: 20 };

function models(): Model[] {
  const out: Model[] = [];
  if (!args.only || args.only === 'shakespeare') {
    try {
      const ck = loadCheckpoint('runs/pretrain');
      const text = readFileSync('data/tinyshakespeare.txt', 'utf8');
      const calibIds = tokensOf(ck.tokenizer, text, 32 * ck.config.n_ctx);
      const snapshot = Object.fromEntries(Object.entries(ck.params).map(([k, t]) => [k, { shape: t.shape, data: Float32Array.from(t.dataSync()) }]));
      disposeParams(ck.params);
      out.push({
        name: `shakespeare (runs/pretrain, gpt2, ${countParams(ck.config).toLocaleString('en-US')} params)`, config: ck.config, tokenizer: ck.tokenizer,
        params: () => Object.fromEntries(Object.entries(snapshot).map(([k, t]) => [k, tf.tensor(t.data, t.shape)])),
        calib: calibrationSamples(calibIds, 32, ck.config.n_ctx), evalIds: tokensOf(ck.tokenizer, text, 8192, true), methods: ALL,
      });
    } catch (err) {
      process.stderr.write(`skipping shakespeare: ${(err as Error).message} (run npm run demo first)\n`);
    }
  }
  if (!args.only || args.only === 'stories') {
    const m = importLlama2c('test/fixtures/stories260K/stories260K.bin', 'test/fixtures/stories260K/tok512.bin');
    const text = readFileSync('data/stories260K-samples.txt', 'utf8');
    const ids = m.tokenizer.encode(text);
    const half = Math.floor(ids.length / 2);
    const snapshot = Object.fromEntries(Object.entries(m.params).map(([k, t]) => [k, { shape: t.shape, data: Float32Array.from(t.dataSync()) }]));
    disposeParams(m.params);
    out.push({
      name: 'stories260K (llama2.c, llama, 260,032 params)', config: m.config, tokenizer: m.tokenizer,
      params: () => Object.fromEntries(Object.entries(snapshot).map(([k, t]) => [k, tf.tensor(t.data, t.shape)])),
      calib: calibrationSamples(ids.slice(0, half), 16, 256), evalIds: ids.slice(half), methods: ALL,
    });
  }
  if (!args.only || args.only === 'large') {
    const config = resolveModelConfig({ arch: 'gpt2', vocab_size: 512, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6 });
    const rng = new Rng(9);
    const random = Array.from({ length: 16 * 256 }, () => rng.nextInt(512));
    const ck = loadCheckpointTokenizer();
    out.push({
      name: `large (random init, gpt2 6L d384, ${countParams(config).toLocaleString('en-US')} params)`, config, tokenizer: ck,
      params: () => initParams(config, 5), calib: calibrationSamples(random, 8, 256), evalIds: random.slice(0, 2048),
      methods: ALL.filter(([n]) => !n.endsWith('g32')),
    });
  }
  return out;
}

function loadCheckpointTokenizer(): Tokenizer {
  return importLlama2c('test/fixtures/stories260K/stories260K.bin', 'test/fixtures/stories260K/tok512.bin').tokenizer;
}

function weightBytes(p: Params): number {
  return Object.values(p).reduce((n, t) => n + t.size * 4, 0); // tfjs keeps float32 and int32 at 4 bytes
}

function logitsOf(p: Params, c: ModelConfig, ids: number[]): Float32Array {
  return tf.tidy(() => Float32Array.from(forward(p, c, tf.tensor2d([ids], [1, ids.length], 'int32')).logits.dataSync() as Float32Array));
}

interface Row { model: string; method: string; size_mb: number; ratio: number; ppl: number; ppl_delta_pct: number; logit_rel_err: number; quantize_s: number; tokens_per_s: number; weight_mb: number }
const rows: Row[] = [];

for (const m of models()) {
  const probe = m.evalIds.slice(0, Math.min(m.config.n_ctx, 128));
  const floatParams = m.params();
  const floatLogits = logitsOf(floatParams, m.config, probe);
  disposeParams(floatParams);
  let floatSize = 0, floatPpl = 0;
  for (const [label, settings] of m.methods) {
    const s = settings ? { ...BASE, ...settings } : null;
    const fresh = m.params(); // not timed: the large model's random init alone takes about a minute
    const t0 = performance.now();
    const q = s ? quantizeModel(fresh, m.config, s, m.calib) : null;
    const quantizeS = (performance.now() - t0) / 1000;
    const params = q ? q.params : fresh;
    const dir = join(TMP, label.replace(/\W+/g, '-'));
    await saveCheckpoint(dir, { config: m.config, params, tokenizer: m.tokenizer, stage: 'bench', stageConfig: {}, quantization: q?.quantization });
    const size = statSync(join(dir, MODEL_FILE)).size;
    const ppl = perplexity(params, m.config, m.evalIds).ppl;
    const lg = logitsOf(params, m.config, probe);
    let num = 0, den = 0;
    lg.forEach((v, i) => ((num += (v - floatLogits[i]!) ** 2), (den += floatLogits[i]! ** 2)));
    const greedy = { max_tokens: GEN, stop: [], temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };
    const prompt = m.evalIds.slice(0, 8);
    const model = { config: m.config, tokenizer: m.tokenizer, params };
    generate(model, prompt, { ...greedy, max_tokens: 4 }); // warm-up
    let tps = 0;
    for (let r = 0; r < 2; r++) tps = Math.max(tps, generate(model, prompt, greedy).tokensPerSecond);
    if (!s) {
      floatSize = size;
      floatPpl = ppl;
    }
    rows.push({
      model: m.name, method: label, size_mb: size / 1e6, ratio: floatSize / size, ppl, ppl_delta_pct: (100 * (ppl - floatPpl)) / floatPpl,
      logit_rel_err: Math.sqrt(num / den), quantize_s: quantizeS, tokens_per_s: tps, weight_mb: weightBytes(params) / 1e6,
    });
    disposeParams(params);
    const r = rows.at(-1)!;
    process.stderr.write(`${r.model} | ${r.method}: ${r.size_mb.toFixed(3)} MB, ppl ${r.ppl.toFixed(3)} (${r.ppl_delta_pct.toFixed(2)}%), ${Math.round(r.tokens_per_s)} tok/s\n`);
  }
}
rmSync(TMP, { recursive: true, force: true });

if (args.json) {
  process.stdout.write(JSON.stringify(rows) + '\n');
} else {
  process.stdout.write('| model | method | size | ratio | perplexity | Δ ppl | logit rel. error | quantize | decode tokens/s | resident weights |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n');
  for (const r of rows) {
    const large = r.model.startsWith('large');
    process.stdout.write(`| ${r.model} | ${r.method} | ${r.size_mb.toFixed(2)} MB | ${r.ratio.toFixed(2)}x | ${large ? '—' : r.ppl.toFixed(3)} | ${large || r.method === 'float32' ? '—' : `${r.ppl_delta_pct >= 0 ? '+' : ''}${r.ppl_delta_pct.toFixed(2)} %`} | ${r.logit_rel_err.toFixed(4)} | ${r.method === 'float32' ? '—' : `${r.quantize_s.toFixed(1)} s`} | ${Math.round(r.tokens_per_s)} | ${r.weight_mb.toFixed(2)} MB |\n`);
  }
}
