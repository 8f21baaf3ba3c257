/**
 * LoRA (src/model/lora.ts + src/train/sft.ts lora/mergeLora): step 0 equals the base exactly, only A/B
 * train (base bit-identical), PEFT files small and named as PEFT does, save → load gives identical
 * logits, merge equals base + adapter within 1e-4, resume, no tensor leak, and the frozen-base kernels
 * give the same adapter gradients as tfjs's reference ops.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint } from '../src/checkpoint/model.js';
import { readManifest } from '../src/checkpoint/manifest.js';
import { readSafetensors } from '../src/checkpoint/safetensors.js';
import { LoraConfigSchema } from '../src/config/stages.js';
import { validate } from '../src/config/load.js';
import { makeSftBatch } from '../src/data/sft.js';
import { type Params, forward } from '../src/model/gpt.js';
import { setReferenceKernels } from '../src/model/kernels.js';
import { applyAdapter, initLora, loadAdapter, loraScale } from '../src/model/lora.js';
import { initParams } from '../src/model/init.js';
import { lora, mergeLora, sftLoss } from '../src/train/sft.js';
import { setupLogger } from '../src/util/log.js';
import { loraConfig, tinyModel, writeTinyBase } from './finetune-fixtures.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-lora-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

const TOKENS = [[510, 72, 105, 32, 66, 111, 98, 10, 72, 105, 32, 66]];
function logitsOf(params: Params, config: ReturnType<typeof tinyModel>, scale?: number): Float32Array {
  const x = tf.tensor2d(TOKENS, [1, TOKENS[0]!.length], 'int32');
  const { logits } = forward(params, config, x, { loraScale: scale });
  const out = logits.dataSync() as Float32Array;
  logits.dispose();
  x.dispose();
  return out;
}
function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const ADAPT = { r: 4, alpha: 8, dropout: 0, target_modules: ['q', 'k', 'v', 'o', 'up', 'down'] };

describe('LoRA', () => {
  const base = join(TMP, 'base');
  const ready = writeTinyBase(base, { n_layer: 2 });

  test('step 0: A random, B zero, so the adapted model equals the base exactly (gpt2 and llama)', () => {
    for (const arch of ['gpt2', 'llama'] as const) {
      const config = tinyModel({ arch, n_layer: 2 });
      const params = initParams(config, 1);
      const adapter = initLora(config, { ...ADAPT, target_modules: arch === 'llama' ? ['q', 'v', 'gate', 'down'] : ADAPT.target_modules }, 2);
      assert.ok(Object.entries(adapter).every(([k, t]) => (k.endsWith('lora_B') ? t.dataSync().every((v) => v === 0) : t.dataSync().some((v) => v !== 0))));
      assert.deepEqual(logitsOf({ ...params, ...adapter }, config, 2), logitsOf(params, config));
      disposeParams(params);
      disposeParams(adapter);
    }
  });

  test('frozen-base kernels (matmulFrozen, loraDelta) give the adapter the same gradients as tfjs reference ops', () => {
    const config = tinyModel({ n_layer: 2 });
    const params = initParams(config, 1);
    const adapter = initLora(config, ADAPT, 2);
    // non-zero B so every path carries gradient
    const vars = Object.fromEntries(Object.entries(adapter).map(([k, t]) => [k, tf.variable(k.endsWith('lora_B') ? tf.randomNormal(t.shape, 0, 0.1, 'float32', 3) : t)]));
    const b = makeSftBatch([{ ids: TOKENS[0]!, trainMask: TOKENS[0]!.map((_, i) => (i > 5 ? 1 : 0)), line: 1 }], 0);
    const grads = (freezeBase: boolean, reference: boolean) => {
      setReferenceKernels(reference);
      try {
        const { value, grads: g } = tf.variableGrads(() => sftLoss({ ...params, ...vars }, config, b, { loraScale: 2, freezeBase }), Object.values(vars));
        value.dispose();
        return Object.fromEntries(Object.entries(g).map(([k, t]) => [k, t.dataSync() as Float32Array]));
      } finally {
        setReferenceKernels(false);
      }
    };
    const ref = grads(false, true), ours = grads(true, false);
    assert.equal(Object.keys(ours).length, 2 * 6 * 2);
    for (const k of Object.keys(ref)) assert.ok(maxAbsDiff(ref[k]!, ours[k]!) < 1e-5, `${k}: ${maxAbsDiff(ref[k]!, ours[k]!)}`);
    Object.values(vars).forEach((v) => v.dispose());
    disposeParams(params);
    disposeParams(adapter);
    b.inputs.dispose(); b.targets.dispose(); b.mask.dispose();
  });

  test('training changes only A/B; the adapter dir is PEFT-shaped and small; save → load → same logits; merge ≈ base + adapter', async () => {
    const config = await ready.then(() => tinyModel({ n_layer: 2 }));
    const before = loadCheckpoint(base);
    const beforeData = Object.fromEntries(Object.entries(before.params).map(([k, t]) => [k, t.dataSync().slice()]));
    const out = join(TMP, 'adapter');
    const counts: number[] = [];
    let trainedLogits: Float32Array | undefined, baseAfter: Record<string, Float32Array> = {}, bNonZero = false;
    const r = await lora(loraConfig(base, out), {
      quiet: true,
      onStep: () => counts.push(tf.memory().numTensors),
      inspect: (p) => {
        trainedLogits = logitsOf(p, config, 2);
        baseAfter = Object.fromEntries(Object.keys(beforeData).map((k) => [k, p[k]!.dataSync() as Float32Array]));
        bNonZero = Object.entries(p).some(([k, t]) => k.endsWith('lora_B') && t.dataSync().some((v) => v !== 0));
      },
    });
    assert.equal(r.step, 4);
    assert.ok(r.losses.every(Number.isFinite));
    assert.equal(new Set(counts.slice(1)).size, 1, `tensor counts per step: ${counts}`);
    // base weights bit-identical, adapter moved
    for (const [k, v] of Object.entries(beforeData)) assert.deepEqual(baseAfter[k], v, k);
    assert.ok(bNonZero, 'lora_B left zero: the adapter did not train');
    // trainable = A/B only: 2 layers × (q,k,v,o: 2·32·4 each + up: 32·4 + 4·128 + down: 128·4 + 4·32)
    assert.equal(r.adapterParams, 2 * (4 * 256 + 640 + 640));
    assert.equal(r.trainableParams, r.adapterParams);

    // directory: adapter + trainer state + manifest, no base weights
    assert.ok(!existsSync(join(out, 'model.safetensors')));
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'trainer_state.json', 'optimizer.safetensors', 'manifest.json']) assert.ok(existsSync(join(out, f)), f);
    const cfgJson = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfgJson.peft_type, 'LORA');
    assert.equal(cfgJson.r, 4);
    assert.equal(cfgJson.lora_alpha, 8);
    // GPT-2 in PEFT's terms (src/checkpoint/hf-names.ts): q,k,v as one block-diagonal adapter on the fused
    // c_attn (rank 3r, alpha 3α: the same α/r), o/up/down on their Conv1D modules, suffixes that are unambiguous.
    assert.deepEqual(cfgJson.target_modules, ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']);
    assert.deepEqual(cfgJson.rank_pattern, { 'attn.c_attn': 12 });
    assert.deepEqual(cfgJson.alpha_pattern, { 'attn.c_attn': 24 });
    assert.equal(cfgJson.fan_in_fan_out, true);
    assert.equal(cfgJson.base_model_name_or_path, resolve(base), 'absolute: resolves from any working directory');
    const m = readManifest(out);
    assert.equal(m.stage, 'lora');
    assert.equal(m.parent?.path, base);
    assert.ok('adapter_model.safetensors' in m.files && 'adapter_config.json' in m.files);
    const st = readSafetensors(join(out, 'adapter_model.safetensors')).tensors;
    assert.deepEqual(st['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight']!.shape, [12, 32]); // PEFT: A [r, in]
    assert.deepEqual(st['base_model.model.transformer.h.0.attn.c_attn.lora_B.weight']!.shape, [96, 12]); // PEFT: B [out, r]
    assert.deepEqual(st['base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight']!.shape, [128, 4]);
    assert.deepEqual(st['base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight']!.shape, [4, 128]);
    assert.equal(Object.keys(st).length, 2 * 4 * 2);
    // B of c_attn is block-diagonal: q's rows only use rank columns 0..3.
    const cB = st['base_model.model.transformer.h.0.attn.c_attn.lora_B.weight']!.data as Float32Array;
    for (let row = 0; row < 32; row++) for (let col = 4; col < 12; col++) assert.equal(cB[row * 12 + col], 0);
    const bytes = statSync(join(out, 'adapter_model.safetensors')).size;
    const blockZeros = 2 * (96 * 12 - 3 * 32 * 4); // the off-diagonal zeros of c_attn's B, per layer
    assert.ok(bytes >= (r.adapterParams + blockZeros) * 4 && bytes < (r.adapterParams + blockZeros) * 4 + 8192, `adapter is ${bytes} bytes`);
    assert.ok(bytes < statSync(join(base, 'model.safetensors')).size / 5);
    const optNames = Object.keys(readSafetensors(join(out, 'optimizer.safetensors')).tensors);
    assert.ok(optNames.length === 48 && optNames.every((n) => /\.lora_[AB]\.exp_avg(_sq)?$/.test(n)));

    // save → load → identical logits
    const applied = applyAdapter(before.params, out);
    assert.deepEqual(logitsOf(applied.params, config, applied.scale), trainedLogits);
    // merge: a plain checkpoint whose logits match base + adapter
    const mergedDir = join(TMP, 'merged');
    await mergeLora({ adapter: out, out: mergedDir }); // base from adapter_config
    const merged = loadCheckpoint(mergedDir);
    const diff = maxAbsDiff(logitsOf(merged.params, merged.config), trainedLogits!);
    assert.ok(diff < 1e-4, `merged vs base+adapter max |Δlogit| = ${diff}`);
    assert.equal(readManifest(mergedDir).stage, 'lora-merge');
    assert.equal(readManifest(mergedDir).parent?.path, base);
    applied.dispose();
    disposeParams(merged.params);
    disposeParams(before.params);
  });

  test('resume continues the same loss curve; a mismatched adapter is refused', async () => {
    await ready;
    const straight = await lora(loraConfig(base, join(TMP, 'l-straight'), { train: { max_steps: 4 } }), { quiet: true });
    const split = join(TMP, 'l-split');
    const a = await lora(loraConfig(base, split, { train: { max_steps: 2 } }), { quiet: true });
    const b = await lora(loraConfig(base, split, { train: { max_steps: 4 } }), { quiet: true, resume: true });
    const resumed = [...a.losses, ...b.losses];
    for (let i = 0; i < 4; i++) assert.ok(Math.abs(resumed[i]! - straight.losses[i]!) < 1e-5, `step ${i + 1}: ${resumed[i]} vs ${straight.losses[i]}`);
    await assert.rejects(lora(loraConfig(base, split, { train: { max_steps: 5 }, lora: { r: 2 } }), { quiet: true, resume: true }), /does not match lora settings/);
    const { config } = loadAdapter(split);
    assert.equal(loraScale(config), 2);
  });

  test('config: unknown target module and bad r are one-line errors', () => {
    const data = { base: 'b', out_dir: 'o', data: { path: 'p' }, train: { max_steps: 1, batch_size: 1 } };
    assert.throws(() => validate(LoraConfigSchema, { ...data, lora: { target_modules: ['qq'] } }, 'lora.yaml'), /^ConfigError: lora\.yaml: lora\.target_modules\[0\]: expected one of "q"/);
    assert.throws(() => validate(LoraConfigSchema, { ...data, lora: { r: 0 } }, 'lora.yaml'), /lora\.yaml: lora\.r: must be > 0/);
    const ok = validate(LoraConfigSchema, data, 'lora.yaml');
    assert.deepEqual(ok.lora, { r: 8, alpha: 16, dropout: 0.05, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] });
  });
});
