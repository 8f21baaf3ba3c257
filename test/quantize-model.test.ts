/**
 * Quantized checkpoints end to end (src/quant/quantize.ts, tensors.ts, checkpoint.ts and the one loader):
 * every method writes AutoGPTQ-named integer tensors and a quantization_config; loading keeps the weights
 * packed and the forward dequantizes them per layer, giving logits and greedy generations identical to
 * the dequantized float model; AWQ's folding leaves the float model's function unchanged; GPTQ beats RTN
 * on the model's own activations; bad quantization metadata is one error naming file and field (exit 2
 * from the CLI); tensor counts stay flat across generations.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { readSafetensors, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { generate } from '../src/model/generate.js';
import { type ModelConfig, type Params, paramShapes, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { type QuantizeSettings, calibrationSamples, captureInputs, perplexity, quantizeModel } from '../src/quant/quantize.js';
import { dequantizeParams } from '../src/quant/tensors.js';
import { hfModuleName } from '../src/checkpoint/hf-names.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { Rng } from '../src/util/rng.js';
import { REPO } from './paths.js';
import { forwardLogits, tempDirs } from './helpers.js';

await initBackend('wasm');

const fresh = tempDirs('llmctl-quant-test-');

const TOKENIZER = Tokenizer.train(['to be or not to be, that is the question; whether tis nobler in the mind to suffer'], { vocabSize: 270 });
// Llama with GQA and an MLP width (40) that is not a multiple of 8 or of the group size: padded words and a partial group.
const LLAMA = resolveModelConfig({ arch: 'llama', vocab_size: 270, n_ctx: 16, n_layer: 2, n_embd: 32, n_head: 4, n_kv_head: 2, n_inner: 40, tie_embeddings: false });
const GPT2 = resolveModelConfig({ arch: 'gpt2', vocab_size: 270, n_ctx: 16, n_layer: 2, n_embd: 32, n_head: 2 });

const SETTINGS: QuantizeSettings = { method: 'int4', group_size: 16, sym: true, desc_act: false, damp_percent: 0.01, block_size: 128, awq_grid: 10 };

function samples(seed: number, count: number, len: number): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => Array.from({ length: len }, () => rng.nextInt(270)));
}

const logitsOf = (p: Params, c: ModelConfig, ids: number[]) => forwardLogits(p, c, [ids]);

const CASES: Array<[string, ModelConfig, Partial<QuantizeSettings>]> = [
  ['int8 llama', LLAMA, { method: 'int8' }],
  ['int4 rtn llama g16 sym', LLAMA, { method: 'int4' }],
  ['int4 rtn gpt2 per-channel asym', GPT2, { method: 'int4', group_size: -1, sym: false }],
  ['gptq llama g16 act-order', LLAMA, { method: 'gptq', desc_act: true }],
  ['gptq gpt2 g16', GPT2, { method: 'gptq' }],
  ['awq llama g16', LLAMA, { method: 'awq' }],
  ['awq gpt2 g16 asym', GPT2, { method: 'awq', sym: false }],
];

describe('quantized checkpoints', () => {
  for (const [name, config, settings] of CASES) {
    test(`${name}: file layout, packed in memory, logits and greedy tokens equal the dequantized float model`, async () => {
      const s = { ...SETTINGS, ...settings };
      const float = initParams(config, 7);
      const q = quantizeModel(initParams(config, 7), config, s, samples(3, 4, 16)); // consumes its params
      const dir = fresh(name.replace(/ /g, '-'));
      await saveCheckpoint(dir, { config, params: q.params, tokenizer: TOKENIZER, stage: 'quantize', stageConfig: s, quantization: q.quantization });
      disposeParams(q.params);

      // The file: AutoGPTQ names and dtypes (or I8 + weight_scale), HF-shaped quantization_config.
      const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      const { tensors } = readSafetensors(join(dir, MODEL_FILE));
      const f = (m: string) => hfModuleName(config, m); // model.layers.0.mlp.down_proj, transformer.h.0.mlp.c_proj, …
      if (s.method === 'int8') {
        assert.deepEqual(cfg.quantization_config, { quant_method: 'int8', bits: 8, group_size: -1, desc_act: false, sym: true, llmctl_method: 'int8' });
        assert.equal(tensors['model.layers.0.mlp.down_proj.weight']!.dtype, 'I8');
        assert.deepEqual(tensors['model.layers.0.mlp.down_proj.weight']!.shape, [32, 40]);
        assert.deepEqual(tensors['model.layers.0.mlp.down_proj.weight_scale']!.shape, [32]);
      } else {
        const qc = cfg.quantization_config;
        assert.equal(qc.quant_method, 'gptq');
        assert.equal(qc.bits, 4);
        assert.equal(qc.group_size, s.group_size);
        assert.equal(qc.sym, s.sym);
        assert.equal(qc.desc_act, s.method === 'gptq' && s.desc_act);
        assert.equal(qc.llmctl_method, s.method === 'int4' ? 'rtn' : s.method);
        const m = f('h.1.mlp.down_proj'); // in = n_inner
        const inn = config.n_inner, G = s.group_size > 0 ? Math.ceil(inn / s.group_size) : 1;
        assert.deepEqual([tensors[`${m}.qweight`]!.dtype, tensors[`${m}.qweight`]!.shape], ['I32', [Math.ceil(inn / 8), 32]]);
        assert.deepEqual([tensors[`${m}.qzeros`]!.dtype, tensors[`${m}.qzeros`]!.shape], ['I32', [G, 4]]);
        assert.deepEqual([tensors[`${m}.scales`]!.dtype, tensors[`${m}.scales`]!.shape], ['F16', [G, 32]]);
        assert.deepEqual([tensors[`${m}.g_idx`]!.dtype, tensors[`${m}.g_idx`]!.shape], ['I32', [inn]]);
        if (s.sym) assert.ok((tensors[`${m}.qzeros`]!.data as Int32Array).every((z) => z === 0x77777777));
        assert.equal(tensors[`${m}.weight`], undefined);
        if (config.arch === 'gpt2') {
          // GPT-2's q/k/v are one HF module: packed side by side, as AutoGPTQ stores c_attn.
          assert.deepEqual(tensors['transformer.h.0.attn.c_attn.qweight']!.shape, [4, 96]);
          assert.deepEqual(tensors['transformer.h.0.attn.c_attn.qzeros']!.shape, [s.group_size > 0 ? 2 : 1, 12]);
          assert.deepEqual(tensors['transformer.h.0.attn.c_attn.g_idx']!.shape, [32]);
        }
      }
      assert.equal(tensors[`${f('wte')}.weight`]!.dtype, 'F32', 'embeddings stay float');

      // Loaded: packed int32 in memory, fewer bytes than float; forward = dequantized float forward, bit for bit.
      const ck = loadCheckpoint(dir);
      assert.equal(ck.quantization?.llmctl_method, s.method === 'int4' ? 'rtn' : s.method);
      assert.equal(ck.params['h.0.attn.q_proj.weight'], undefined);
      assert.equal(ck.params['h.0.attn.q_proj.qweight']!.dtype, 'int32');
      const deq = dequantizeParams(ck.params, paramShapes(config));
      const ids = [1, 5, 9, 33, 200, 17, 4];
      assert.deepEqual(logitsOf(ck.params, config, ids), logitsOf(deq, config, ids));
      const model = { config, tokenizer: TOKENIZER };
      const opts = { max_tokens: 8, stop: [], temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };
      assert.deepEqual(generate({ ...model, params: ck.params }, ids, opts).ids, generate({ ...model, params: deq }, ids, opts).ids);
      // …and close to the float model it came from.
      const fl = logitsOf(float, config, ids), qd = logitsOf(deq, config, ids);
      let maxDiff = 0, maxAbs = 0;
      fl.forEach((v, i) => ((maxDiff = Math.max(maxDiff, Math.abs(v - qd[i]!))), (maxAbs = Math.max(maxAbs, Math.abs(v)))));
      assert.ok(maxDiff > 0 && maxDiff < 0.2 * maxAbs, `max logit difference ${maxDiff} (max |logit| ${maxAbs})`);
      disposeParams(deq);
      disposeParams(ck.params);
      disposeParams(float);
    });
  }

  test('int8 with outlier features (GPT-2, fused c_attn): float columns stored beside I8, forward = dequantized float', async () => {
    const q = quantizeModel(initParams(GPT2, 4), GPT2, { ...SETTINGS, method: 'int8', outlier_threshold: 2.5 }, samples(6, 4, 16));
    assert.equal(q.quantization.llm_int8_threshold, 2.5);
    const n = q.params['h.0.attn.q_proj.outlier_idx']!.size;
    assert.ok(n > 0 && n < 32, `${n} outlier columns`);
    const dir = fresh('int8-outliers');
    await saveCheckpoint(dir, { config: GPT2, params: q.params, tokenizer: TOKENIZER, stage: 'quantize', stageConfig: {}, quantization: q.quantization });
    const { tensors } = readSafetensors(join(dir, MODEL_FILE));
    assert.deepEqual(tensors['transformer.h.0.attn.c_attn.outlier_weight']!.shape, [96, n]);
    assert.deepEqual(tensors['transformer.h.0.attn.c_attn.weight']!.shape, [96, 32]);
    const ck = loadCheckpoint(dir);
    const deq = dequantizeParams(ck.params, paramShapes(GPT2));
    const ref = dequantizeParams(q.params, paramShapes(GPT2));
    const ids = [3, 1, 4, 1, 5];
    assert.deepEqual(logitsOf(ck.params, GPT2, ids), logitsOf(deq, GPT2, ids));
    assert.deepEqual(logitsOf(deq, GPT2, ids), logitsOf(ref, GPT2, ids));
    // the outlier rows are the float weights themselves
    const col = (ck.params['h.0.attn.q_proj.outlier_idx']!.dataSync() as Int32Array)[0]!;
    const float = initParams(GPT2, 4);
    assert.deepEqual(Array.from(deq['h.0.attn.q_proj.weight']!.dataSync().slice(col * 32, col * 32 + 32)), Array.from(float['h.0.attn.q_proj.weight']!.dataSync().slice(col * 32, col * 32 + 32)));
    for (const p of [q.params, ck.params, deq, ref, float]) disposeParams(p);
  });

  test('resident weight bytes: int8 ≈ 1/4 and int4 ≈ 1/8 of float for the linear layers', () => {
    const c = resolveModelConfig({ arch: 'llama', vocab_size: 64, n_ctx: 16, n_layer: 1, n_embd: 128, n_head: 4, n_inner: 256 });
    const bytes = (p: Params, re: RegExp) => Object.entries(p).filter(([k]) => re.test(k)).reduce((b, [, t]) => b + t.size * 4, 0);
    const linear = /_proj\./;
    const float = initParams(c, 1);
    const f = bytes(float, linear);
    const i8 = quantizeModel(initParams(c, 1), c, { ...SETTINGS, method: 'int8' });
    const i4 = quantizeModel(initParams(c, 1), c, { ...SETTINGS, method: 'int4', group_size: 128 });
    const r8 = bytes(i8.params, linear) / f, r4 = bytes(i4.params, linear) / f;
    assert.ok(r8 > 0.25 && r8 < 0.26, `int8 ratio ${r8}`); // + one float scale per output
    assert.ok(r4 > 0.125 && r4 < 0.16, `int4 ratio ${r4}`); // + scales, zeros, g_idx
    for (const p of [float, i8.params, i4.params]) disposeParams(p);
  });

  test('AWQ folding keeps the float function: scaled norms and weights give the same logits before rounding', () => {
    // With a 16-bit grid so fine that rounding is invisible, AWQ's scaled model must match the float model.
    const float = initParams(LLAMA, 11);
    const before = logitsOf(float, LLAMA, [3, 4, 5, 6]);
    disposeParams(float);
    const x = captureInputs(initParams(LLAMA, 11), LLAMA, samples(5, 2, 16), 0);
    assert.deepEqual([...x.keys()].sort(), ['h.0.attn.k_proj', 'h.0.attn.o_proj', 'h.0.attn.q_proj', 'h.0.attn.v_proj', 'h.0.mlp.down_proj', 'h.0.mlp.gate_proj', 'h.0.mlp.up_proj']);
    assert.equal(x.get('h.0.attn.q_proj'), x.get('h.0.attn.k_proj'), 'q, k and v share one input tensor');
    assert.deepEqual(x.get('h.0.attn.q_proj')!.shape, [32, 32]);
    for (const t of new Set(x.values())) t.dispose();
    const q = quantizeModel(initParams(LLAMA, 11), LLAMA, { ...SETTINGS, method: 'awq' }, samples(5, 4, 16));
    const deq = dequantizeParams(q.params, paramShapes(LLAMA));
    const after = logitsOf(deq, LLAMA, [3, 4, 5, 6]);
    let d = 0;
    before.forEach((v, i) => (d = Math.max(d, Math.abs(v - after[i]!))));
    assert.ok(d < 0.05, `max logit change ${d}`);
    assert.ok(Object.keys(q.alphas!).length === 6, `α per scaled pair: ${JSON.stringify(q.alphas)}`); // 2 layers × (ln_1, ln_2, up→down); v→o skipped under GQA
    disposeParams(q.params);
    disposeParams(deq);
  });

  test('GPTQ perplexity on the calibration text is no worse than RTN at the same group size', () => {
    // A model with structure worth keeping: random init is near-uniform, so train-free we compare on held data.
    const float = initParams(GPT2, 21);
    const calib = samples(8, 8, 16);
    const text = calib.flat();
    const rtn = quantizeModel(initParams(GPT2, 21), GPT2, { ...SETTINGS, method: 'int4' });
    const gptq = quantizeModel(initParams(GPT2, 21), GPT2, { ...SETTINGS, method: 'gptq' }, calib);
    const pf = perplexity(float, GPT2, text).ppl, pr = perplexity(rtn.params, GPT2, text).ppl, pg = perplexity(gptq.params, GPT2, text).ppl;
    assert.ok(Math.abs(pg - pf) <= Math.abs(pr - pf) + 1e-3, `float ${pf}, rtn ${pr}, gptq ${pg}`);
    for (const p of [float, rtn.params, gptq.params]) disposeParams(p);
  });

  test('calibrationSamples cuts consecutive windows and drops the remainder', () => {
    assert.deepEqual(calibrationSamples([1, 2, 3, 4, 5, 6, 7], 5, 3), [[1, 2, 3], [4, 5, 6]]);
    assert.deepEqual(calibrationSamples([1, 2, 3, 4, 5, 6, 7], 1, 3), [[1, 2, 3]]);
  });

  test('tensor count stays flat across generations from a quantized model', async () => {
    const q = quantizeModel(initParams(LLAMA, 2), LLAMA, { ...SETTINGS, method: 'int4' });
    const opts = { max_tokens: 6, stop: [], temperature: 0.8, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };
    generate({ config: LLAMA, tokenizer: TOKENIZER, params: q.params }, [1, 2, 3], opts);
    const count = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) generate({ config: LLAMA, tokenizer: TOKENIZER, params: q.params }, [1, 2, 3], { ...opts, seed: i });
    assert.equal(tf.memory().numTensors, count);
    disposeParams(q.params);
  });
});

describe('bad quantization metadata', () => {
  let good = '';
  test('setup: an int4 checkpoint', async () => {
    const q = quantizeModel(initParams(LLAMA, 3), LLAMA, { ...SETTINGS, method: 'int4' });
    good = fresh('good');
    await saveCheckpoint(good, { config: LLAMA, params: q.params, tokenizer: TOKENIZER, stage: 'quantize', stageConfig: {}, quantization: q.quantization });
    disposeParams(q.params);
  });

  const editConfig = (f: (qc: Record<string, unknown>) => void) => {
    const dir = fresh('bad');
    cpSync(good, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    f(cfg.quantization_config);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    return rehash(dir);
  };
  // Re-hash the manifest, as a file made by another tool (or an old llmctl) would be consistent with its own
  // files: the quantization checks must catch what the integrity check cannot.
  const rehash = async (dir: string) => {
    const { hashDir } = await import('../src/checkpoint/dir.js');
    const { readManifest, writeManifest } = await import('../src/checkpoint/manifest.js');
    const m = readManifest(dir);
    writeManifest(dir, { ...m, files: await hashDir(dir, Object.keys(m.files)) });
    return dir;
  };
  const editTensors = (f: (t: ReturnType<typeof readSafetensors>['tensors']) => void) => {
    const dir = fresh('bad');
    cpSync(good, dir, { recursive: true });
    const { tensors } = readSafetensors(join(dir, MODEL_FILE));
    const copy = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, { ...t, data: t.data.slice() }]));
    f(copy);
    writeSafetensors(join(dir, MODEL_FILE), copy);
    return rehash(dir);
  };
  const cases: Array<[string, () => Promise<string>, RegExp]> = [
    ['bits 3', () => editConfig((q) => (q.bits = 3)), /config\.json: quantization_config\.bits: gptq checkpoints here are 4-bit, got 3/],
    ['unknown quant_method', () => editConfig((q) => (q.quant_method = 'exl2')), /quantization_config\.quant_method: expected "gptq" or "int8", got "exl2"/],
    ['group_size that does not match the tensors', () => editConfig((q) => (q.group_size = 8)), /model\.safetensors: 'model\.layers\.0\.self_attn\.q_proj\.qzeros' has shape \[2,4\] but config\.json and quantization_config imply \[4,4\]/],
    ['desc_act false with a permuted g_idx', () => editTensors((t) => ((t['model.layers.0.self_attn.q_proj.g_idx']!.data as Int32Array)[0] = 1)), /'model\.layers\.0\.self_attn\.q_proj\.g_idx'\[0\] = 1 but desc_act is false/],
    ['g_idx out of range', () => editTensors((t) => ((t['model.layers.0.self_attn.q_proj.g_idx']!.data as Int32Array)[3] = 9)), /'model\.layers\.0\.self_attn\.q_proj\.g_idx'\[3\] = 9 is not a group index/],
    ['missing qzeros', () => editTensors((t) => delete t['model.layers.1.mlp.up_proj.qzeros']), /missing tensor 'model\.layers\.1\.mlp\.up_proj\.qzeros'/],
    ['scales stored as I32', () => editTensors((t) => (t['model.layers.0.self_attn.k_proj.scales'] = { dtype: 'I32', shape: t['model.layers.0.self_attn.k_proj.scales']!.shape, data: new Int32Array(t['model.layers.0.self_attn.k_proj.scales']!.data.length) })), /'model\.layers\.0\.self_attn\.k_proj\.scales' is I32, expected F16 or F32/],
    ['quantization_config on a float file', () => editTensors((t) => {
      for (const k of Object.keys(t)) if (/\.(qweight|qzeros|scales|g_idx)$/.test(k)) delete t[k];
    }), /model\.safetensors: config\.json has a quantization_config but no module is stored quantized/],
  ];
  for (const [what, make, re] of cases) {
    test(`${what}: one error naming the file and field`, async () => {
      const dir = await make();
      assert.throws(() => loadCheckpoint(dir), (e: Error) => re.test(e.message) && e.message.includes(dir) && !e.message.includes('\n'));
    });
  }

  test('the CLI prints that one line and exits 2', async () => {
    const dir = await editConfig((q) => (q.sym = 'yes'));
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'generate', '--checkpoint', dir, '--prompt', 'to', '--log-level', 'silent'], { cwd: REPO, encoding: 'utf8' });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr.trim(), /^llmctl generate: \S+config\.json: quantization_config\.sym: expected true or false, got "yes"$/);
  });
});
