/**
 * LoRA adapters in PEFT's layout for the Hugging Face model (src/checkpoint/hf-names.ts): keys, target_modules,
 * GPT-2's fused c_attn with a block-diagonal B and rank/alpha patterns. The check is PEFT's own arithmetic done
 * by hand on the files — W += (alpha/r)·B·A for every adapted module (transposed for fan_in_fan_out) — which
 * must give the logits of our base + adapter. Also: a general (not block-diagonal) c_attn adapter from PEFT,
 * legacy adapter files, and where base_model_name_or_path resolves.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { type TensorData, readSafetensors, toFloat32, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { type ModelConfig, type Params, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, type LoraConfig, applyAdapter, initLora, loadAdapter, loadForInference, loraScale, saveAdapter } from '../src/model/lora.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { forwardLogits, tempDirs } from './helpers.js';

await initBackend('wasm');

const fresh = tempDirs('llmctl-hf-adapter-test-');
const TOK = Tokenizer.train(['to be or not to be, that is the question'], { vocabSize: 262 });
const IDS = [[5, 100, 261, 7, 42, 0, 255, 9]];

const logits = (p: Params, c: ModelConfig, scale?: number) => forwardLogits(p, c, IDS, scale === undefined ? {} : { loraScale: scale });
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

/** Random A and B (B is zero at init; a trained adapter is not). */
function trainedAdapter(c: ModelConfig, lc: LoraConfig, seed: number): Params {
  const p = initLora(c, lc, seed);
  for (const k of Object.keys(p)) if (k.endsWith('lora_B')) {
    const shape = p[k]!.shape;
    p[k]!.dispose();
    p[k] = tf.randomNormal(shape, 0, 0.3, 'float32', seed++);
  }
  return p;
}

/** PEFT's merge_and_unload, by hand on the files: W += s·B·A (as [out, in]; transposed into Conv1D's [in, out]). */
function peftMerge(baseDir: string, adapterDir: string, outDir: string): void {
  mkdirSync(outDir, { recursive: true });
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(baseDir, f), join(outDir, f));
  const W = readSafetensors(join(baseDir, MODEL_FILE)).tensors;
  const A = readSafetensors(join(adapterDir, ADAPTER_WEIGHTS_FILE)).tensors;
  const cfg = JSON.parse(readFileSync(join(adapterDir, ADAPTER_CONFIG_FILE), 'utf8'));
  const out: Record<string, TensorData> = { ...W };
  for (const key of Object.keys(A).filter((k) => k.endsWith('.lora_A.weight'))) {
    const module = key.slice('base_model.model.'.length, -'.lora_A.weight'.length);
    const suffix = Object.keys(cfg.rank_pattern ?? {}).find((p) => module.endsWith(p));
    const s = (suffix ? cfg.alpha_pattern[suffix] : cfg.lora_alpha) / (suffix ? cfg.rank_pattern[suffix] : cfg.r);
    assert.ok(cfg.target_modules.some((t: string) => module === t || module.endsWith('.' + t)), `${module} matches target_modules`);
    const a = A[key]!, b = A[key.replace('lora_A', 'lora_B')]!;
    const [r, nin] = a.shape as [number, number], nout = b.shape[0]!;
    const av = toFloat32(a), bv = toFloat32(b), w = Float32Array.from(toFloat32(W[`${module}.weight`]!));
    for (let o = 0; o < nout; o++) for (let i = 0; i < nin; i++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += bv[o * r + k]! * av[k * nin + i]!;
      if (cfg.fan_in_fan_out) w[i * nout + o]! += s * d;
      else w[o * nin + i]! += s * d;
    }
    out[`${module}.weight`] = { dtype: 'F32', shape: W[`${module}.weight`]!.shape, data: w };
  }
  writeSafetensors(join(outDir, MODEL_FILE), out);
}

const base = { vocab_size: 262, n_ctx: 16, n_layer: 2, n_embd: 16 };
const CASES: Array<[string, ModelConfig, string[], RegExp]> = [
  ['llama (GQA): q, v, gate, down', resolveModelConfig({ ...base, arch: 'llama', n_head: 4, n_kv_head: 2, n_inner: 24 }), ['q', 'v', 'gate', 'down'], /^base_model\.model\.model\.layers\.\d\.(self_attn\.[qv]|mlp\.(gate|down))_proj\.lora_[AB]\.weight$/],
  ['gpt2: q, k, v, o, up, down', resolveModelConfig({ ...base, arch: 'gpt2', n_head: 2 }), ['q', 'k', 'v', 'o', 'up', 'down'], /^base_model\.model\.transformer\.h\.\d\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_[AB]\.weight$/],
  ['gpt2 (GQA, k/v repeated on disk): q and v only (a zero k block)', resolveModelConfig({ ...base, arch: 'gpt2', n_head: 4, n_kv_head: 2 }), ['q', 'v'], /^base_model\.model\.transformer\.h\.\d\.attn\.c_attn\.lora_[AB]\.weight$/],
];

describe("PEFT's arithmetic on our adapter files gives our logits", () => {
  for (const [label, c, targets, keyRe] of CASES) {
    test(label, async (t) => {
      const baseDir = fresh('base');
      const params = initParams(c, 4);
      await saveCheckpoint(baseDir, { config: c, params, tokenizer: TOK, stage: 'test', stageConfig: {} });
      const lc: LoraConfig = { r: 3, alpha: 5, dropout: 0, target_modules: targets };
      const lora = trainedAdapter(c, lc, 9);
      const dir = fresh('adapter');
      mkdirSync(dir);
      saveAdapter(dir, lora, lc, baseDir, c);
      const keys = Object.keys(readSafetensors(join(dir, ADAPTER_WEIGHTS_FILE)).tensors);
      assert.ok(keys.every((k) => keyRe.test(k)), keys.join(', '));
      const ours = logits({ ...params, ...lora }, c, loraScale(lc));
      assert.ok(maxDiff(ours, logits(params, c)) > 1e-3, 'the adapter changes the logits');

      const merged = fresh('peft-merged');
      peftMerge(baseDir, dir, merged);
      const m = loadCheckpoint(merged);
      const diff = maxDiff(logits(m.params, m.config), ours);
      assert.ok(diff < 1e-4, `PEFT merge vs base + adapter: max |Δlogit| ${diff}`);
      t.diagnostic(`${label}: PEFT merge vs base + adapter, max |Δlogit| ${diff.toExponential(2)}`);

      // And back: the same in-memory adapter, module for module (no k adapter invented from the zero block).
      const back = loadAdapter(dir, c);
      assert.deepEqual(Object.keys(back.lora).sort(), Object.keys(lora).sort());
      for (const [k, t] of Object.entries(lora)) assert.deepEqual(back.lora[k]!.dataSync(), t.dataSync(), k);
      assert.equal(loraScale(back.config), loraScale(lc));
      for (const p of [params, lora, m.params, back.lora]) disposeParams(p);
    });
  }

  test('a general c_attn adapter (as PEFT trains one: B not block-diagonal, its own rank pattern) applies exactly', async () => {
    const c = resolveModelConfig({ ...base, arch: 'gpt2', n_head: 2 });
    const baseDir = fresh('base');
    const params = initParams(c, 5);
    await saveCheckpoint(baseDir, { config: c, params, tokenizer: TOK, stage: 'test', stageConfig: {} });
    const dir = fresh('peft-adapter');
    mkdirSync(dir);
    const rnd = (shape: number[], s: number) => {
      const t = tf.randomNormal(shape, 0, 0.3, 'float32', s);
      const d = { dtype: 'F32' as const, shape, data: t.dataSync() as Float32Array };
      t.dispose();
      return d;
    };
    const tensors: Record<string, TensorData> = {};
    for (let i = 0; i < 2; i++) {
      tensors[`base_model.model.transformer.h.${i}.attn.c_attn.lora_A.weight`] = rnd([5, 16], 10 + i);
      tensors[`base_model.model.transformer.h.${i}.attn.c_attn.lora_B.weight`] = rnd([48, 5], 20 + i);
      tensors[`base_model.model.transformer.h.${i}.mlp.c_fc.lora_A.weight`] = rnd([2, 16], 30 + i);
      tensors[`base_model.model.transformer.h.${i}.mlp.c_fc.lora_B.weight`] = rnd([64, 2], 40 + i);
    }
    writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), tensors);
    writeFileSync(join(dir, ADAPTER_CONFIG_FILE), JSON.stringify({
      peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 2, lora_alpha: 4, target_modules: ['c_attn', 'c_fc'], fan_in_fan_out: true,
      rank_pattern: { c_attn: 5 }, alpha_pattern: { c_attn: 3 }, base_model_name_or_path: relative(dir, baseDir), bias: 'none',
    }));
    const merged = fresh('peft-merged');
    peftMerge(baseDir, dir, merged);
    const m = loadCheckpoint(merged);
    // No model passed: the base config is found through base_model_name_or_path, relative to the adapter dir.
    const inf = loadForInference(dir);
    const diff = maxDiff(logits(inf.model.params, inf.model.config, inf.scale), logits(m.params, m.config));
    assert.ok(diff < 1e-4, `max |Δlogit| ${diff}`);
    inf.dispose();
    disposeParams(params);
    disposeParams(m.params);
  });
});

describe('older adapter files', () => {
  test('legacy keys (our module names) still load and apply', async () => {
    const c = resolveModelConfig({ ...base, arch: 'gpt2', n_head: 2 });
    const baseDir = fresh('base');
    const params = initParams(c, 6);
    await saveCheckpoint(baseDir, { config: c, params, tokenizer: TOK, stage: 'test', stageConfig: {} });
    const lc: LoraConfig = { r: 2, alpha: 4, dropout: 0, target_modules: ['q', 'v', 'down'] };
    const lora = trainedAdapter(c, lc, 3);
    const dir = fresh('legacy-adapter');
    mkdirSync(dir);
    // As saveAdapter wrote them before: base_model.model.<our module>.lora_A.weight [r, in], B [out, r], path as typed.
    const tensors: Record<string, TensorData> = {};
    for (const [k, t] of Object.entries(lora)) {
      const tt = tf.transpose(t);
      tensors['base_model.model.' + k.replace(/\.lora_([AB])$/, '.lora_$1.weight')] = { dtype: 'F32', shape: tt.shape.slice(), data: tt.dataSync() as Float32Array };
      tt.dispose();
    }
    writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), tensors, { format: 'pt' });
    writeFileSync(join(dir, ADAPTER_CONFIG_FILE), JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 2, lora_alpha: 4, lora_dropout: 0, target_modules: ['q_proj', 'v_proj', 'down_proj'], bias: 'none', fan_in_fan_out: false, inference_mode: true, base_model_name_or_path: relative(process.cwd(), baseDir) }));
    const applied = applyAdapter(params, dir, c);
    assert.deepEqual(logits(applied.params, c, applied.scale), logits({ ...params, ...lora }, c, loraScale(lc)));
    applied.dispose();
    // The stored relative path (typed relative to the working directory) still finds the base.
    const found = loadAdapter(dir, c);
    assert.equal(resolve(found.baseModel), resolve(baseDir));
    disposeParams(found.lora);
    disposeParams(params);
    disposeParams(lora);
  });
});
