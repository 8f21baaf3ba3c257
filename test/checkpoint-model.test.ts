/**
 * Model checkpoints (src/checkpoint/model.ts): bit-exact round trips, the on-disk layout other tools
 * read ([out, in] linear weights, HF config aliases), manifest hashes and parents, shape errors that
 * name the tensor, and saves that fail without touching the previous checkpoint.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { readManifest, verifyManifestFiles } from '../src/checkpoint/manifest.js';
import { CONFIG_FILE, MODEL_FILE, disposeParams, loadCheckpoint, loadTrainerState, saveCheckpoint } from '../src/checkpoint/model.js';
import { readSafetensors, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { type ModelConfig, type Params, isLinearWeight, paramShapes, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { forwardLogits, tempDirs } from './helpers.js';

await initBackend('wasm');

const fresh = tempDirs('llmctl-ckpt-model-test-');
const TMP = fresh.root;

const TOKENIZER = Tokenizer.train(['to be or not to be, that is the question'], { vocabSize: 262 });
const GPT2 = resolveModelConfig({ arch: 'gpt2', vocab_size: 262, n_ctx: 8, n_layer: 2, n_embd: 16, n_head: 2 });
const LLAMA = resolveModelConfig({ arch: 'llama', vocab_size: 262, n_ctx: 8, n_layer: 2, n_embd: 16, n_head: 4, n_kv_head: 2, n_inner: 24, tie_embeddings: false });
const TOKENS = [[3, 100, 261, 7, 42, 0, 255, 9], [1, 2, 3, 4, 5, 6, 7, 8]];

const logits = (p: Params, c: ModelConfig) => forwardLogits(p, c, TOKENS);

/** Save with this file's tokenizer and a fixed stage config. */
function save(dir: string, c: ModelConfig, params: Params, extra: Partial<Parameters<typeof saveCheckpoint>[1]> = {}) {
  return saveCheckpoint(dir, { config: c, params, tokenizer: TOKENIZER, stage: 'test', stageConfig: { note: 'unit test' }, ...extra });
}

describe('save → load round trip', () => {
  for (const [label, c] of [['gpt2 (tied, biases)', GPT2], ['llama (untied lm_head, GQA)', LLAMA]] as const) {
    test(`${label}: identical logits, tensors and config`, async () => {
      const dir = fresh('rt');
      const params = initParams(c, 17);
      await save(dir, c, params, { metrics: { val_loss: 1.5 } });
      const ck = loadCheckpoint(dir);
      assert.deepEqual(ck.config, c);
      assert.deepEqual(Object.keys(ck.params).sort(), Object.keys(paramShapes(c)).sort());
      if (!c.tie_embeddings) assert.ok('lm_head.weight' in ck.params, 'untied head saved');
      for (const [k, t] of Object.entries(params)) {
        assert.deepEqual(ck.params[k]!.shape, t.shape, k);
        // F32 on disk, transposes are exact: bit-identical values.
        assert.deepEqual(ck.params[k]!.dataSync(), t.dataSync(), k);
      }
      const a = logits(params, c), b = logits(ck.params, c);
      let maxDiff = 0;
      for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
      assert.equal(maxDiff, 0, 'same weights and same ops give the exact same logits');
      // The tokenizer comes back too.
      assert.deepEqual(ck.tokenizer.encode('to be or not'), TOKENIZER.encode('to be or not'));
      assert.equal(ck.manifest?.metrics.val_loss, 1.5);
      disposeParams(params);
      disposeParams(ck.params);
    });
  }
});

describe('on-disk layout (Hugging Face names and orientation, src/checkpoint/hf-names.ts)', () => {
  test('llama: LlamaForCausalLM names, nn.Linear [out, in] weights, everything else as in memory', async () => {
    const dir = fresh('layout');
    const params = initParams(LLAMA, 3);
    await save(dir, LLAMA, params);
    const { tensors, metadata } = readSafetensors(join(dir, MODEL_FILE));
    assert.equal(metadata?.format, 'pt');
    const names: Record<string, string> = {
      'wte.weight': 'model.embed_tokens.weight', 'ln_f.weight': 'model.norm.weight', 'lm_head.weight': 'lm_head.weight',
      'h.1.ln_1.weight': 'model.layers.1.input_layernorm.weight', 'h.1.ln_2.weight': 'model.layers.1.post_attention_layernorm.weight',
      'h.1.attn.q_proj.weight': 'model.layers.1.self_attn.q_proj.weight', 'h.1.attn.k_proj.weight': 'model.layers.1.self_attn.k_proj.weight',
      'h.1.attn.v_proj.weight': 'model.layers.1.self_attn.v_proj.weight', 'h.1.attn.o_proj.weight': 'model.layers.1.self_attn.o_proj.weight',
      'h.1.mlp.gate_proj.weight': 'model.layers.1.mlp.gate_proj.weight', 'h.1.mlp.up_proj.weight': 'model.layers.1.mlp.up_proj.weight',
      'h.1.mlp.down_proj.weight': 'model.layers.1.mlp.down_proj.weight',
    };
    // 9 tensors per layer + embed + norm + lm_head, nothing else.
    assert.equal(Object.keys(tensors).length, 9 * 2 + 3);
    for (const [mem, disk] of Object.entries(names)) {
      const t = params[mem]!, d = tensors[disk]!;
      assert.ok(d, disk);
      assert.equal(d.dtype, 'F32', disk);
      const want = isLinearWeight(mem) ? tf.transpose(t) : t.clone();
      assert.deepEqual(d.shape, want.shape, `${disk} shape`);
      assert.deepEqual(d.data, want.dataSync(), `${disk} values`);
      want.dispose();
    }
    // A non-square one, spelled out: k_proj maps 16 → 2 kv heads × 4 = 8, so nn.Linear stores it [8, 16].
    assert.deepEqual(tensors['model.layers.0.self_attn.k_proj.weight']!.shape, [8, 16]);
    assert.deepEqual(tensors['lm_head.weight']!.shape, [262, 16]);
    disposeParams(params);
  });

  test('gpt2: GPT2LMHeadModel names, Conv1D [in, out] weights, fused c_attn = q|k|v, tied head omitted', async () => {
    const dir = fresh('layout2');
    const params = initParams(GPT2, 3);
    // Non-zero biases so the fused bias order is tested too.
    for (const k of Object.keys(params)) if (k.endsWith('.bias')) { params[k]!.dispose(); params[k] = tf.randomNormal(params[k]!.shape, 0, 1, 'float32', 5); }
    await save(dir, GPT2, params);
    const { tensors } = readSafetensors(join(dir, MODEL_FILE));
    // Per layer: ln_1 (2), c_attn (2), attn.c_proj (2), ln_2 (2), c_fc (2), mlp.c_proj (2); + wte, wpe, ln_f (2).
    assert.equal(Object.keys(tensors).length, 12 * 2 + 4);
    assert.ok(!('lm_head.weight' in tensors), 'tied head is not stored (as save_pretrained does)');
    const same = (disk: string, mem: string) => assert.deepEqual(tensors[disk]!.data, params[mem]!.dataSync(), disk);
    same('transformer.wte.weight', 'wte.weight');
    same('transformer.wpe.weight', 'wpe.weight');
    same('transformer.ln_f.bias', 'ln_f.bias');
    same('transformer.h.1.attn.c_proj.weight', 'h.1.attn.o_proj.weight');
    same('transformer.h.1.mlp.c_fc.weight', 'h.1.mlp.up_proj.weight');
    same('transformer.h.1.mlp.c_proj.bias', 'h.1.mlp.down_proj.bias');
    assert.deepEqual(tensors['transformer.h.1.mlp.c_fc.weight']!.shape, [16, 64], 'Conv1D [in, out]');
    const cw = tensors['transformer.h.1.attn.c_attn.weight']!, cb = tensors['transformer.h.1.attn.c_attn.bias']!;
    assert.deepEqual(cw.shape, [16, 48]);
    const q = params['h.1.attn.q_proj.weight']!.arraySync() as number[][], k = params['h.1.attn.k_proj.weight']!.arraySync() as number[][], v = params['h.1.attn.v_proj.weight']!.arraySync() as number[][];
    // Row 3 of c_attn is row 3 of q, then of k, then of v.
    assert.deepEqual(Array.from((cw.data as Float32Array).slice(3 * 48, 4 * 48)), [...q[3]!, ...k[3]!, ...v[3]!].map(Math.fround));
    const qb = params['h.1.attn.q_proj.bias']!.dataSync(), kb = params['h.1.attn.k_proj.bias']!.dataSync(), vb = params['h.1.attn.v_proj.bias']!.dataSync();
    assert.deepEqual(Array.from(cb.data as Float32Array), [...qb, ...kb, ...vb]);
    disposeParams(params);
  });

  test('config.json has what AutoConfig reads (Llama and GPT-2) plus our fields', async () => {
    const dir = fresh('cfg');
    const params = initParams(LLAMA, 1);
    await save(dir, LLAMA, params);
    const cfg = JSON.parse(readFileSync(join(dir, CONFIG_FILE), 'utf8')) as Record<string, unknown>;
    assert.equal(cfg.n_embd, 16);
    assert.equal(cfg.model_type, 'llama');
    assert.deepEqual(cfg.architectures, ['LlamaForCausalLM']);
    assert.equal(cfg.hidden_size, 16);
    assert.equal(cfg.num_hidden_layers, 2);
    assert.equal(cfg.num_attention_heads, 4);
    assert.equal(cfg.num_key_value_heads, 2);
    assert.equal(cfg.head_dim, 4);
    assert.equal(cfg.intermediate_size, 24);
    assert.equal(cfg.max_position_embeddings, 8);
    assert.equal(cfg.rms_norm_eps, 1e-5);
    assert.equal(cfg.rope_theta, 10000);
    assert.equal(cfg.hidden_act, 'silu');
    assert.equal(cfg.attention_bias, false);
    assert.equal(cfg.mlp_bias, false);
    assert.equal(cfg.tie_word_embeddings, false);
    assert.equal(cfg.vocab_size, 262);
    assert.equal(cfg.torch_dtype, 'float32');
    // The byte-level tokenizer has no BOS: GPT-2's convention, bos = eos = <|endoftext|>.
    const eot = TOKENIZER.tokenToId('<|endoftext|>');
    assert.deepEqual([cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id], [eot, eot, eot]);
    disposeParams(params);
    // gpt2 gets GPT-2's names.
    const d2 = fresh('cfg2');
    const p2 = initParams(GPT2, 1);
    await save(d2, GPT2, p2);
    const c2 = JSON.parse(readFileSync(join(d2, CONFIG_FILE), 'utf8')) as Record<string, unknown>;
    assert.equal(c2.model_type, 'gpt2');
    assert.deepEqual(c2.architectures, ['GPT2LMHeadModel']);
    assert.equal(c2.n_inner, 64);
    assert.equal(c2.n_positions, 8);
    assert.equal(c2.layer_norm_epsilon, 1e-5);
    assert.equal(c2.activation_function, 'gelu_new');
    assert.equal(c2.tie_word_embeddings, true);
    assert.equal(c2.eos_token_id, eot);
    // generation_config.json: HF generate stops on <|im_end|> too (a chat turn's end), as llmctl generate does.
    const g = JSON.parse(readFileSync(join(d2, 'generation_config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(g, { bos_token_id: eot, eos_token_id: [eot, TOKENIZER.tokenToId('<|im_end|>')], pad_token_id: eot });
    disposeParams(p2);
  });
});

describe('manifest', () => {
  test('lists every file with hashes that verify; a changed byte is caught; parent hash recorded', async () => {
    const parentDir = fresh('parent');
    const params = initParams(GPT2, 5);
    await save(parentDir, GPT2, params);
    const pm = readManifest(parentDir);
    assert.equal(pm.stage, 'test');
    assert.equal(pm.parent, null);
    assert.deepEqual(pm.config, { note: 'unit test' });
    assert.equal(pm.versions.backend, 'wasm');
    assert.deepEqual(Object.keys(pm.files).sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    for (const [f, d] of Object.entries(pm.files)) {
      const buf = readFileSync(join(parentDir, f));
      assert.equal(d.bytes, buf.length, f);
      assert.equal(d.sha256, createHash('sha256').update(buf).digest('hex'), f);
    }
    await verifyManifestFiles(parentDir, pm);

    const childDir = fresh('child');
    await save(childDir, GPT2, params, { parentDir });
    const cm = readManifest(childDir);
    assert.equal(cm.parent?.path, parentDir);
    assert.equal(cm.parent?.sha256, createHash('sha256').update(readFileSync(join(parentDir, 'manifest.json'))).digest('hex'));

    // Flip one byte of the weights: verification names the file.
    const path = join(childDir, MODEL_FILE);
    const buf = readFileSync(path);
    buf[buf.length - 1] ^= 0x01;
    writeFileSync(path, buf);
    await assert.rejects(verifyManifestFiles(childDir, cm), (e: Error) => e.message.includes(path) && /does not match manifest\.json/.test(e.message));
    disposeParams(params);
  });

  test('a trainer save adds optimizer + trainer state (listed and hashed), and loadTrainerState reads them', async () => {
    const dir = fresh('trainer');
    const params = initParams(GPT2, 2);
    const optimizer = Object.fromEntries(Object.entries(params).map(([k, t]) => [`${k}.exp_avg`, tf.onesLike(t)]));
    Object.assign(optimizer, Object.fromEntries(Object.entries(params).map(([k, t]) => [`${k}.exp_avg_sq`, tf.fill(t.shape, 2)])));
    const state = { step: 7, tokens_seen: 448, rng_state: '12345678901234567890', lr: 1e-3, schedule: { kind: 'cosine' as const, peak_lr: 1e-3, min_lr: 1e-4, warmup_steps: 2, total_steps: 10 } };
    await save(dir, GPT2, params, { trainer: { state, optimizer } });
    const m = readManifest(dir);
    assert.ok('optimizer.safetensors' in m.files && 'trainer_state.json' in m.files, Object.keys(m.files).join(','));
    await verifyManifestFiles(dir, m);
    const ts = loadTrainerState(dir)!;
    assert.deepEqual(ts.state, state);
    // Moments are stored as in memory (no linear transpose): same shape order as the parameter.
    assert.equal(ts.optimizer['h.0.attn.q_proj.weight.exp_avg']!.length, 16 * 16);
    assert.ok(ts.optimizer['h.0.mlp.up_proj.weight.exp_avg_sq']!.every((v) => v === 2), 'exp_avg_sq values');
    const onDisk = readSafetensors(join(dir, 'optimizer.safetensors')).tensors['h.0.mlp.up_proj.weight.exp_avg']!;
    assert.deepEqual(onDisk.shape, [16, 64], 'moments keep the in-memory [in, out] layout');
    disposeParams(params);
    disposeParams(optimizer);
  });
});

describe('errors', () => {
  test('a tensor with the wrong shape fails to load with a message naming it', async () => {
    const dir = fresh('badshape');
    const params = initParams(LLAMA, 4);
    await save(dir, LLAMA, params);
    // Without a manifest (a hand-made directory): with one, any edit is a hash mismatch first.
    rmSync(join(dir, 'manifest.json'));
    const path = join(dir, MODEL_FILE);
    const { tensors } = readSafetensors(path);
    // Store k_proj as if it had 3 kv heads' worth of rows (12 instead of 8).
    const k1 = 'model.layers.1.self_attn.k_proj.weight';
    tensors[k1] = { dtype: 'F32', shape: [12, 16], data: new Float32Array(12 * 16) };
    writeSafetensors(path, tensors);
    assert.throws(() => loadCheckpoint(dir), (e: Error) =>
      e.message.includes(path) && e.message.includes(`'${k1}'`) && e.message.includes('[12,16]') && e.message.includes('[8,16]'));
    // A missing tensor and an extra one are named as well.
    const { tensors: t2 } = readSafetensors(path);
    delete t2[k1];
    writeSafetensors(path, t2);
    assert.throws(() => loadCheckpoint(dir), /missing tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' \(for h\.1\.attn\.k_proj\.weight\)/);
    t2[k1] = readSafetensors(join(dir, MODEL_FILE)).tensors['model.layers.0.self_attn.k_proj.weight']!;
    t2['model.layers.9.mlp.extra.weight'] = { dtype: 'F32', shape: [2], data: new Float32Array(2) };
    writeSafetensors(path, t2);
    assert.throws(() => loadCheckpoint(dir), /unexpected tensor 'model\.layers\.9\.mlp\.extra\.weight'/);
    disposeParams(params);
  });

  test('a config.json without a required field names the file and the field', async () => {
    const dir = fresh('badcfg');
    const params = initParams(GPT2, 4);
    await save(dir, GPT2, params);
    rmSync(join(dir, 'manifest.json')); // (see above)
    const cfgPath = join(dir, CONFIG_FILE);
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    delete cfg.n_layer;
    writeFileSync(cfgPath, JSON.stringify(cfg));
    assert.throws(() => loadCheckpoint(dir), (e: Error) => e.message.includes(cfgPath) && e.message.includes('n_layer'));
    assert.throws(() => loadCheckpoint(join(TMP, 'nope')), /checkpoint directory not found/);
    disposeParams(params);
  });

  test('a save that fails part-way leaves the previous checkpoint byte-for-byte intact', async () => {
    const dir = fresh('atomic');
    const old = initParams(GPT2, 6);
    await save(dir, GPT2, old);
    const before = Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f))]));
    const next = initParams(GPT2, 7);
    await assert.rejects(save(dir, GPT2, next, { overwrite: true, extra: () => { throw new Error('disk full (simulated)'); } }), /disk full/);
    // Same files, same bytes, no temp leftovers next to it, and it still loads to the old weights.
    assert.deepEqual(readdirSync(dir).sort(), Object.keys(before).sort());
    for (const [f, buf] of Object.entries(before)) assert.ok(readFileSync(join(dir, f)).equals(buf), `${f} unchanged`);
    assert.deepEqual(readdirSync(TMP).filter((f) => f.startsWith('.')), [], 'no temp dirs left');
    await verifyManifestFiles(dir, readManifest(dir));
    const ck = loadCheckpoint(dir);
    assert.deepEqual(ck.params['wte.weight']!.dataSync(), old['wte.weight']!.dataSync());
    // A later successful save replaces it completely.
    await save(dir, GPT2, next, { overwrite: true });
    const ck2 = loadCheckpoint(dir);
    assert.deepEqual(ck2.params['wte.weight']!.dataSync(), next['wte.weight']!.dataSync());
    assert.ok(!existsSync(join(dir, 'optimizer.safetensors')), 'no stale files from the old version');
    for (const p of [old, next, ck.params, ck2.params]) disposeParams(p);
  });
});
