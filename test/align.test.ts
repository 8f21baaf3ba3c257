/**
 * The rm and dpo stages (src/train/rm.ts, dpo.ts, src/align/reward.ts) on a tiny model: reward-head
 * gradient check, save → load → identical rewards, HF-style files, LoRA reward adapters, DPO at step 0
 * = log 2 exactly, the reference bit-identical after training, resume = straight run (with the cached
 * reference log-probs reused), flat tensor counts, and bad input (one line, exit 2, nothing written).
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { SCORE, initScoreHead, loadRewardModel, scoreConversations, scoreSequences } from '../src/align/reward.js';
import { disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { readManifest } from '../src/checkpoint/manifest.js';
import { readSafetensors } from '../src/checkpoint/safetensors.js';
import { DpoConfigSchema, RmConfigSchema } from '../src/config/align.js';
import { loadConfig } from '../src/config/load.js';
import { parse as parseYaml } from 'yaml';
import { makePreferenceBatch, disposePreferenceBatch, readPreferenceJsonl, tokenizePairs } from '../src/data/preference.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { initParams } from '../src/model/init.js';
import { loadForInference } from '../src/model/lora.js';
import type { Params } from '../src/model/gpt.js';
import { dpo, REF_LOGPS_FILE } from '../src/train/dpo.js';
import { rm, rmLoss, rewardsOf } from '../src/train/rm.js';
import { mergeLora } from '../src/train/sft.js';
import { setupLogger } from '../src/util/log.js';
import { tinyModel, tinyTokenizer, writeTinyBase } from './finetune-fixtures.js';
import { FIXTURES_PREF, REPO, STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-align-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
const BASE = join(TMP, 'base');
const PREF = join(FIXTURES_PREF, 'alpaca_pref_30.jsonl');
before(async () => {
  await writeTinyBase(BASE);
});

const optim = { lr: 3e-3, warmup_steps: 0, schedule: 'constant', weight_decay: 0 };
const loop = { max_steps: 4, batch_size: 2, eval_every: 0, eval_batches: 2, save_every: 0, log_every: 1, seed: 5 };
const rmCfg = (out: string, over: Record<string, unknown> = {}) =>
  RmConfigSchema.parse({ base: BASE, out_dir: out, optim, data: { path: PREF, val_fraction: 0.2 }, reward: { center_rewards_coefficient: 0.01 }, train: loop, ...over });
const dpoCfg = (out: string, over: { dpo?: Record<string, unknown>; train?: Record<string, unknown>; [k: string]: unknown } = {}) =>
  DpoConfigSchema.parse({ base: BASE, out_dir: out, optim, data: { path: PREF, val_fraction: 0.2 }, ...over, dpo: { beta: 0.1, ...over.dpo }, train: { ...loop, ...over.train } });
const bytes = (t: tf.Tensor) => Buffer.from((t.dataSync() as Float32Array).buffer.slice(0));
const metricsLines = (dir: string) => readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);

describe('reward model', () => {
  test('gradient of the Bradley–Terry loss w.r.t. the head (and a transformer weight) matches finite differences', () => {
    const config = tinyModel();
    const base = initParams(config, 11);
    const head = initScoreHead(config, 1);
    const scaled = tf.mul(head, 20); // rewards of order 1, so the loss is not flat
    head.dispose();
    const tok = tinyTokenizer();
    const { examples } = tokenizePairs(tok, readPreferenceJsonl(PREF).pairs.slice(0, 3).map((p, i) => ({ ...p, margin: 0.3 * i })), config.n_ctx);
    const batch = makePreferenceBatch(examples, tok.padId);
    const lossAt = (p: Params) => {
      const l = rmLoss(p, config, batch, { fwd: {}, centerRewardsCoefficient: 0.05 });
      const v = l.dataSync()[0]!;
      l.dispose();
      return v;
    };
    const checked: [string, number][] = [[SCORE, 0], [SCORE, 7], [SCORE, 31], ['ln_f.weight', 3], ['h.0.mlp.down_proj.weight', 5]];
    const names = [...new Set(checked.map(([n]) => n))];
    const all: Params = { ...base, [SCORE]: scaled };
    const grads = tf.grads((...xs: tf.Tensor[]) => rmLoss({ ...all, ...Object.fromEntries(names.map((n, i) => [n, xs[i]!])) }, config, batch, { fwd: {}, centerRewardsCoefficient: 0.05 }));
    const g = grads(names.map((n) => all[n]!));
    for (const [name, i] of checked) {
      const analytic = g[names.indexOf(name)]!.dataSync()[i]!;
      const eps = 1e-2;
      const at = (d: number) => {
        const v = all[name]!.dataSync().slice() as Float32Array;
        v[i] = v[i]! + d;
        const t = tf.tensor(v, all[name]!.shape);
        const out = lossAt({ ...all, [name]: t });
        t.dispose();
        return out;
      };
      const numeric = (at(eps) - at(-eps)) / (2 * eps);
      assert.ok(Math.abs(analytic - numeric) <= 2e-3 + 0.02 * Math.abs(numeric), `${name}[${i}]: analytic ${analytic} vs numeric ${numeric}`);
    }
    g.forEach((t) => t.dispose());
    disposePreferenceBatch(batch);
    disposeParams(base);
    scaled.dispose();
  });

  let rmDir = '';
  test('full training: learns, tensors flat, HF sequence-classification files, save → load gives identical rewards', async () => {
    rmDir = join(TMP, 'rm');
    const counts: number[] = [];
    let inMemory: { chosen: number[]; rejected: number[] } | undefined;
    const cfg = rmCfg(rmDir, { train: { ...loop, max_steps: 6, eval_every: 3 } });
    const before = tf.memory().numTensors;
    const r = await rm(cfg, {
      quiet: true,
      onStep: () => counts.push(tf.memory().numTensors),
      inspect: (m) => {
        const { examples } = tokenizePairs(m.tokenizer, readPreferenceJsonl(PREF).pairs, m.config.n_ctx);
        inMemory = rewardsOf(m.params, m.config, examples, 4, m.tokenizer.padId, m.fwd);
      },
    });
    assert.equal(tf.memory().numTensors, before, 'every tensor freed after the run');
    assert.ok(counts.every((c) => c === counts[0]), `tensor counts per step: ${counts}`);
    assert.equal(r.step, 6);
    assert.ok(r.losses.every(Number.isFinite));
    const evals = metricsLines(rmDir).filter((l) => 'val_loss' in l);
    assert.equal(evals.length, 2);
    for (const k of ['accuracy', 'margin', 'reward_mean', 'reward_std']) assert.ok(Number.isFinite(evals[1]![k]), k);
    assert.ok(metricsLines(rmDir).some((l) => 'accuracy' in l && !('val_loss' in l)), 'per-step batch accuracy logged');

    const cfgJson = JSON.parse(readFileSync(join(rmDir, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(cfgJson.architectures, ['GPT2ForSequenceClassification']);
    assert.equal(cfgJson.num_labels, 1);
    const st = readSafetensors(join(rmDir, 'model.safetensors'));
    assert.deepEqual(st.tensors[SCORE]!.shape, [1, 32]);
    assert.equal(readManifest(rmDir).stage, 'rm');
    assert.equal(readManifest(rmDir).parent?.path, BASE);

    const tensorsBeforeLoad = tf.memory().numTensors;
    const model = loadRewardModel(rmDir);
    const { examples } = tokenizePairs(model.tokenizer, readPreferenceJsonl(PREF).pairs, model.config.n_ctx);
    const loadedTensors = tf.memory().numTensors;
    scoreSequences(model, examples.map((e) => e.chosen.ids), 4);
    assert.equal(tf.memory().numTensors, loadedTensors, 'scoring frees its tensors');
    const loaded = scoreSequences(model, examples.map((e) => e.chosen.ids), 5);
    assert.deepEqual(loaded.map(Math.fround), inMemory!.chosen.map(Math.fround));
    assert.deepEqual(scoreSequences(model, examples.map((e) => e.rejected.ids), 3).map(Math.fround), inMemory!.rejected.map(Math.fround));
    // Rendering a (prompt, response) alone fits it as training does when it is the longer side of its pair.
    const pairs = readPreferenceJsonl(PREF).pairs;
    const longer = examples.map((e, i) => i).filter((i) => examples[i]!.chosen.ids.length - examples[i]!.chosen.start >= examples[i]!.rejected.ids.length - examples[i]!.rejected.start);
    assert.ok(longer.length > 10);
    assert.deepEqual(scoreConversations(model, longer.map((i) => ({ prompt: pairs[i]!.prompt, response: pairs[i]!.chosen }))).map(Math.fround), longer.map((i) => Math.fround(inMemory!.chosen[i]!)));
    model.dispose();
    assert.equal(tf.memory().numTensors, tensorsBeforeLoad, 'dispose() frees the reward model');
    // The transformer of a reward model still loads as a causal LM.
    const ck = loadCheckpoint(rmDir);
    assert.equal(ck.heads, undefined);
    disposeParams(ck.params);
  });

  test('resume equals a straight run', async () => {
    const straight = join(TMP, 'rm-straight'), split = join(TMP, 'rm-split');
    const a = await rm(rmCfg(straight), { quiet: true });
    await rm(rmCfg(split, { train: { ...loop, max_steps: 2 } }), { quiet: true });
    const b = await rm(rmCfg(split), { quiet: true, resume: true });
    assert.deepEqual(b.losses, a.losses.slice(2));
    const sa = readSafetensors(join(straight, 'model.safetensors')).tensors, sb = readSafetensors(join(split, 'model.safetensors')).tensors;
    for (const k of Object.keys(sa)) assert.deepEqual(Buffer.from(sb[k]!.data.buffer, sb[k]!.data.byteOffset, sb[k]!.data.byteLength), Buffer.from(sa[k]!.data.buffer, sa[k]!.data.byteOffset, sa[k]!.data.byteLength), k);
  });

  test('LoRA: adapter + score head in PEFT layout (modules_to_save), base untouched, loads for scoring', async () => {
    const out = join(TMP, 'rm-lora');
    const baseBytes = readFileSync(join(BASE, 'model.safetensors'));
    let inMemory: number[] = [];
    const r = await rm(rmCfg(out, { lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q', 'v'] }, train: { ...loop, max_steps: 3 } }), {
      quiet: true,
      inspect: (m) => {
        const { examples } = tokenizePairs(m.tokenizer, readPreferenceJsonl(PREF).pairs.slice(0, 4), m.config.n_ctx);
        inMemory = rewardsOf(m.params, m.config, examples, 4, m.tokenizer.padId, m.fwd).chosen;
      },
    });
    assert.equal(r.trainableParams, 2 * (32 * 4 + 4 * 32) + 32); // q and v adapters of one layer + the head
    const ac = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(ac.task_type, 'SEQ_CLS');
    assert.deepEqual(ac.modules_to_save, ['score']);
    const st = readSafetensors(join(out, 'adapter_model.safetensors')).tensors;
    assert.deepEqual(st['base_model.model.score.weight']!.shape, [1, 32]);
    assert.ok(!existsSync(join(out, 'model.safetensors')));
    assert.ok(readFileSync(join(BASE, 'model.safetensors')).equals(baseBytes));
    const model = loadRewardModel(out);
    const pairs = readPreferenceJsonl(PREF).pairs.slice(0, 4);
    const items = pairs.map((p) => ({ prompt: p.prompt, response: p.chosen }));
    assert.deepEqual(scoreConversations(model, items).map(Math.fround), inMemory.map(Math.fround));
    model.dispose();

    // lora merge keeps the head (a full reward model: W + s·A@B rounds differently from the unmerged
    // forward, hence the tolerance), and it, like loadForInference, frees every tensor it loads.
    const tensors = tf.memory().numTensors;
    const merged = join(TMP, 'rm-lora-merged');
    await mergeLora({ adapter: out, out: merged });
    assert.equal(tf.memory().numTensors, tensors, 'lora merge frees the adapter and its head');
    assert.deepEqual(JSON.parse(readFileSync(join(merged, 'config.json'), 'utf8')).architectures, ['GPT2ForSequenceClassification']);
    const full = loadRewardModel(merged);
    scoreConversations(full, items).forEach((r, i) => assert.ok(Math.abs(r - inMemory[i]!) < 1e-5, `merged reward ${i}: ${r} vs ${inMemory[i]}`));
    full.dispose();
    const inf = loadForInference(out);
    inf.dispose();
    assert.equal(tf.memory().numTensors, tensors, 'loadForInference of a reward adapter frees what it loads');
  });

  test('llmctl rm score prints one JSON line per pair', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'rm', 'score', '--checkpoint', rmDir, '--data', PREF, '--log-level', 'silent', '--backend', 'wasm'], { cwd: REPO, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { line: number; chosen: number; rejected: number });
    assert.equal(rows.length, readPreferenceJsonl(PREF).pairs.length);
    assert.ok(rows.every((x) => Number.isFinite(x.chosen) && Number.isFinite(x.rejected) && x.line >= 1));
  });

  test('loadRewardModel refuses a checkpoint without a head', () => assert.throws(() => loadRewardModel(BASE), /model\.safetensors: not a reward model \(no 'score\.weight'/));
});

describe('dpo', () => {
  test('step 0 loss is exactly log 2 (policy = reference), rewards 0; tensor counts flat', async () => {
    const counts: number[] = [];
    const out = join(TMP, 'dpo-live');
    const r = await dpo(dpoCfg(out, { dpo: { precompute_ref_logps: false } }), { quiet: true, onStep: () => counts.push(tf.memory().numTensors) });
    assert.equal(r.losses[0], Math.fround(Math.LN2));
    const first = metricsLines(out)[0]!;
    assert.equal(first['rewards/margins'], 0);
    assert.equal(first['rewards/chosen'], 0);
    assert.ok(r.losses[3]! < r.losses[0]!, `loss falls: ${r.losses}`);
    assert.ok(counts.every((c) => c === counts[0]), `tensor counts per step: ${counts}`);
    assert.equal(r.reference.cache, 'none');
  });

  test('precomputed reference: step 0 ≈ log 2, the table is saved and listed in the manifest; the manifest names parent and reference', async () => {
    const out = join(TMP, 'dpo-pre');
    const r = await dpo(dpoCfg(out), { quiet: true });
    assert.ok(Math.abs(r.losses[0]! - Math.LN2) < 1e-5, `${r.losses[0]}`);
    assert.equal(r.reference.cache, 'computed');
    const m = readManifest(out);
    assert.ok(REF_LOGPS_FILE in m.files);
    assert.equal(m.parent?.path, BASE);
    assert.deepEqual((m.config as { reference: unknown }).reference, { path: BASE, sha256: m.parent!.sha256, mode: 'checkpoint', precomputed: true });
    assert.match(m.parent!.sha256, /^[0-9a-f]{64}$/);
    // The output is an ordinary checkpoint.
    const ck = loadCheckpoint(out);
    assert.deepEqual(ck.config, tinyModel());
    disposeParams(ck.params);
  });

  test('resume equals a straight run and reuses the cached reference log-probs (ipo + rpo)', async () => {
    const over = { dpo: { loss_type: 'ipo', rpo_alpha: 0.5 } };
    const straight = join(TMP, 'dpo-straight'), split = join(TMP, 'dpo-split');
    const a = await dpo(dpoCfg(straight, over), { quiet: true });
    await dpo(dpoCfg(split, { ...over, train: { max_steps: 2 } }), { quiet: true });
    const b = await dpo(dpoCfg(split, over), { quiet: true, resume: true });
    assert.equal(b.reference.cache, 'reused');
    assert.deepEqual(b.losses, a.losses.slice(2));
    const sa = loadCheckpoint(straight), sb = loadCheckpoint(split);
    for (const k of Object.keys(sa.params)) assert.ok(bytes(sa.params[k]!).equals(bytes(sb.params[k]!)), k);
    disposeParams(sa.params);
    disposeParams(sb.params);
  });

  test('LoRA policy: the reference is the base with the adapter off, bit-identical after training', async () => {
    const out = join(TMP, 'dpo-lora');
    const fresh = loadCheckpoint(BASE);
    let same = false;
    const r = await dpo(dpoCfg(out, { lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q', 'k', 'v', 'o'] }, dpo: { precompute_ref_logps: false, loss_type: 'hinge' } }), {
      quiet: true,
      inspect: (m) => {
        same = Object.keys(fresh.params).every((k) => bytes(m.frozenBase![k]!).equals(bytes(fresh.params[k]!)));
        // and the adapter did move: the policy is no longer the reference
        assert.ok(Object.entries(m.trainable).some(([k, v]) => k.endsWith('lora_B') && tf.tidy(() => tf.max(tf.abs(v)).dataSync()[0]!) > 0));
      },
    });
    disposeParams(fresh.params);
    assert.ok(same, 'reference (base) weights bit-identical after training');
    assert.equal(r.losses[0], 1); // hinge at z = 0: max(0, 1 − 0)
    assert.equal(r.reference.mode, 'base with the adapter off');
    assert.ok(existsSync(join(out, 'adapter_model.safetensors')) && !existsSync(join(out, 'model.safetensors')));
  });

  test('a reference of another architecture: one-line error, nothing written', async () => {
    const other = join(TMP, 'other-arch');
    await writeTinyBase(other, { n_layer: 2 });
    const out = join(TMP, 'dpo-mismatch');
    await assert.rejects(dpo(dpoCfg(out, { ref: other }), { quiet: true }), /other-arch\/config\.json: the reference's architecture differs from the policy's .*n_layer 2 vs 1/);
    assert.ok(!existsSync(out));
  });
});

describe('CLI: bad input is one line, exit 2, nothing written', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args, '--log-level', 'silent', '--backend', 'wasm'], { cwd: REPO, encoding: 'utf8' });
  const yaml = (name: string, body: string) => {
    const p = join(TMP, name);
    writeFileSync(p, body);
    return p;
  };
  const expectBad = (r: ReturnType<typeof cli>, re: RegExp, out: string) => {
    assert.equal(r.status, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, re);
    assert.ok(!existsSync(out), `${out} was written`);
  };
  test('missing field / non-preference file / tokenizer without a chat template / reference of another architecture', async () => {
    const bad = join(TMP, 'missing.jsonl');
    writeFileSync(bad, JSON.stringify({ prompt: 'Q', chosen: 'a', rejected: 'b' }) + '\n' + JSON.stringify({ prompt: 'Q', chosen: 'a' }) + '\n');
    const out = join(TMP, 'cli-out');
    const train = 'train: {max_steps: 1, batch_size: 1, eval_every: 0, save_every: 0}';
    expectBad(cli('rm', '--config', yaml('a.yaml', `base: ${BASE}\ndata: {path: ${bad}}\n${train}\nout_dir: ${out}\n`)), /^llmctl rm: .*missing\.jsonl: line 2: field 'rejected': missing/, out);
    expectBad(cli('dpo', '--config', yaml('b.yaml', `base: ${BASE}\ndata: {path: ${join(REPO, 'test/fixtures/alpaca_30.jsonl')}}\n${train}\nout_dir: ${out}\n`)), /^llmctl dpo: .*alpaca_30\.jsonl: line 1: field 'chosen': missing/, out);
    const stories = join(TMP, 'stories');
    const m = importLlama2c(STORIES_BIN, TOK512_PATH);
    await saveCheckpoint(stories, { config: m.config, params: m.params, tokenizer: m.tokenizer, stage: 'import', stageConfig: {}, parentDir: null });
    disposeParams(m.params);
    expectBad(cli('rm', '--config', yaml('c.yaml', `base: ${stories}\ndata: {path: ${PREF}}\n${train}\nout_dir: ${out}\n`)), /^llmctl rm: .*stories: the tokenizer \(\w+\) has no ChatML tokens/, out);
    const other = join(TMP, 'other-arch-cli');
    await writeTinyBase(other, { n_embd: 64 });
    expectBad(cli('dpo', '--config', yaml('d.yaml', `base: ${BASE}\nref: ${other}\ndata: {path: ${PREF}}\n${train}\nout_dir: ${out}\n`)), /^llmctl dpo: .*config\.json: the reference's architecture differs .*n_embd 64 vs 32/, out);
  });
});

test('the shipped configs parse; pipeline-full runs rm then dpo', () => {
  const rmc = loadConfig(RmConfigSchema, join(REPO, 'configs/rm.yaml'));
  const dpc = loadConfig(DpoConfigSchema, join(REPO, 'configs/dpo.yaml'));
  assert.equal(rmc.base, 'runs/sft');
  assert.equal(dpc.dpo.beta, 0.1);
  assert.equal(dpc.dpo.precompute_ref_logps, true);
  const stages = (parseYaml(readFileSync(join(REPO, 'configs/pipeline-full.yaml'), 'utf8')) as { stages: { run: string }[] }).stages.map((x) => x.run);
  assert.ok(stages.indexOf('sft') < stages.indexOf('rm') && stages.indexOf('rm') < stages.indexOf('dpo'), stages.join(' → '));
  assert.throws(() => DpoConfigSchema.parse({ ...dpc, dpo: { ...dpc.dpo, loss_type: 'ipo', label_smoothing: 0.1 } }), /label smoothing applies to the sigmoid loss only/);
});
