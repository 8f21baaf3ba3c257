/**
 * The ppo stage on a tiny model: PPO's invariants (first ratio exactly 1, KL 0 while policy = reference,
 * frozen roles bit-identical, flat tensor count), resume on the same curve, GRPO, LoRA and shared-value
 * variants, the files written, and bad input.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { readManifest, verifyManifestFiles } from '../src/checkpoint/manifest.js';
import { loadCheckpoint, loadTrainerState } from '../src/checkpoint/model.js';
import { readSafetensors } from '../src/checkpoint/safetensors.js';
import { PpoConfigSchema } from '../src/config/ppo.js';
import { encodePrompt, parsePromptRow, readPromptsJsonl } from '../src/data/prompts.js';
import { loadAdapter } from '../src/model/lora.js';
import { NonFiniteLossError } from '../src/train/trainer.js';
import { SAMPLES_FILE, VALUE_HEAD_FILE, ppo } from '../src/train/ppo.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { setupLogger } from '../src/util/log.js';
import { ALPACA_30, writeTinyBase } from './finetune-fixtures.js';
import { REPO } from './paths.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-ppo-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
const BASE = join(TMP, 'base'), PROMPTS = join(TMP, 'prompts.jsonl');

before(async () => {
  await writeTinyBase(BASE);
  const rows = readFileSync(ALPACA_30, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { instruction: string }).instruction.slice(0, 24));
  writeFileSync(PROMPTS, rows.map((p) => JSON.stringify({ prompt: p })).join('\n') + '\n');
});

function config(out: string, over: Record<string, unknown> = {}) {
  return PpoConfigSchema.parse({
    policy: BASE,
    reward: { type: 'contains', text: 'e' },
    prompts: { path: PROMPTS, eval_fraction: 0.2 },
    rollout: { batch_size: 4, group_size: 2, max_new_tokens: 6 },
    ppo: { epochs: 2, mini_batch_size: 2, kl: { coef: 0.1, target: 1, horizon: 100 } },
    optim: { lr: 3e-3, warmup_steps: 0, schedule: 'constant', weight_decay: 0 },
    train: { max_steps: 3, eval_prompts: 4, sample_every: 1 },
    out_dir: join(TMP, out),
    ...over,
  });
}

const same = (a: tf.Tensor, b: tf.Tensor) => Buffer.from((a.dataSync() as Float32Array).buffer).equals(Buffer.from((b.dataSync() as Float32Array).buffer));

describe('prompts', () => {
  test('plain, chat and preference rows (TRL, HH-RLHF) give the prompt before the reply', () => {
    assert.deepEqual(parsePromptRow({ prompt: 'Hi' }), { text: 'Hi' });
    assert.deepEqual(parsePromptRow({ messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'Q' }, { role: 'assistant', content: 'A' }] }), { messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'Q' }] });
    assert.deepEqual(parsePromptRow({ prompt: 'Q', chosen: 'A', rejected: 'B' }), { messages: [{ role: 'user', content: 'Q' }] });
    assert.deepEqual(parsePromptRow({ chosen: '\n\nHuman: Hello\n\nAssistant: Hi\n\nHuman: How?\n\nAssistant: Fine', rejected: '\n\nHuman: Hello\n\nAssistant: Hi\n\nHuman: How?\n\nAssistant: Bad' }), {
      messages: [{ role: 'user', content: 'Hello' }, { role: 'assistant', content: 'Hi' }, { role: 'user', content: 'How?' }],
    });
    const path = join(TMP, 'rows.jsonl');
    writeFileSync(path, '{"prompt": "ok"}\n\n{"messages": [{"role": "assistant", "content": "x"}]}\n');
    assert.throws(() => readPromptsJsonl(path), (e: Error) => e.message === `${path}: line 3: messages: no user turn before the reply`);
  });

  test('a chat prompt ends with the assistant header, where the response starts', () => {
    const tok = Tokenizer.load(BASE);
    const ids = encodePrompt(tok, { text: 'Hi' }, true);
    assert.equal(tok.decode(ids), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  });
});

describe('ppo invariants', () => {
  test('first mini-batch: ratio exactly 1, clipfrac 0; KL exactly 0 while the policy is the reference; frozen reference bit-identical; tensors flat', async () => {
    const updates: { step: number; epoch: number; minibatch: number; ratio: number; clipfrac: number; maxAbsLogRatio: number }[] = [];
    const steps: { step: number; kl: number; tensors: number }[] = [];
    let referenceSame = false, policyMoved = false;
    const cfg = config('ppo-a');
    const r = await ppo(cfg, {
      quiet: true,
      onUpdate: (u) => updates.push(u),
      onStep: (step, m) => steps.push({ step, kl: m['objective/kl']!, tensors: tf.memory().numTensors }),
      inspect: ({ policy, reference }) => {
        const disk = loadCheckpoint(BASE);
        referenceSame = Object.keys(disk.params).every((k) => same(reference[k]!, disk.params[k]!));
        policyMoved = Object.keys(disk.params).some((k) => !same(policy[k]!, disk.params[k]!));
        for (const t of Object.values(disk.params)) t.dispose();
      },
    });
    const first = updates[0]!;
    assert.deepEqual([first.step, first.epoch, first.minibatch], [1, 0, 0]);
    assert.equal(first.ratio, 1);
    assert.equal(first.clipfrac, 0);
    assert.equal(first.maxAbsLogRatio, 0, 'rollout and update log-probs agree bit for bit');
    assert.equal(updates.length, 3 * 2 * 2, '3 steps × 2 epochs × 2 mini-batches');
    assert.equal(steps[0]!.kl, 0, 'step 1 samples from the reference itself');
    assert.equal(r.evalStart!.kl, 0);
    assert.ok(referenceSame, 'reference weights unchanged');
    assert.ok(policyMoved, 'the policy trained');
    assert.ok(steps.every((s) => s.tensors === steps[0]!.tensors), `tensor counts ${steps.map((s) => s.tensors)}`);
    // The files: a full checkpoint, the value model beside it, the logs.
    const out = cfg.out_dir;
    await verifyManifestFiles(out, readManifest(out));
    assert.equal(readManifest(out).stage, 'ppo');
    const value = readSafetensors(join(out, VALUE_HEAD_FILE)).tensors;
    assert.deepEqual(value['v_head.weight']!.shape, [32, 1]);
    assert.ok(value['value_model.wte.weight'], 'separate value trunk saved');
    const metrics = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
    for (const k of ['objective/kl', 'objective/entropy', 'objective/scores', 'objective/rlhf_reward', 'policy/approxkl_avg', 'policy/clipfrac_avg', 'loss/policy_avg', 'loss/value_avg', 'val/clipfrac_avg', 'val/ratio', 'val/num_eos_tokens', 'kl_coef', 'time/rollout', 'time/update']) {
      assert.ok(metrics.some((m) => Number.isFinite(m[k])), `metrics.jsonl has ${k}`);
    }
    assert.equal(readFileSync(join(out, SAMPLES_FILE), 'utf8').trim().split('\n').length, 3);
    const loaded = loadCheckpoint(out); // the policy is an ordinary checkpoint
    for (const t of Object.values(loaded.params)) t.dispose();
  });

  test('resume after step 2 continues the same curve (RNG, β controller, optimizer, value model, prompt cursor)', async () => {
    const straight: Record<string, number>[] = [], resumed: Record<string, number>[] = [];
    await ppo(config('straight', { train: { max_steps: 4, eval_prompts: 2 } }), { quiet: true, onStep: (_, m) => straight.push(m) });
    await ppo(config('resumed', { train: { max_steps: 2, eval_prompts: 2 } }), { quiet: true, onStep: (_, m) => resumed.push(m) });
    const state = loadTrainerState(join(TMP, 'resumed'))!.state;
    assert.equal(state.step, 2);
    assert.notEqual((state.data_cursor as { kl_coef: number }).kl_coef, 0.1, 'the adaptive β moved and is saved');
    await ppo(config('resumed', { train: { max_steps: 4, eval_prompts: 2 } }), { quiet: true, resume: true, onStep: (_, m) => resumed.push(m) });
    const keys = ['objective/scores', 'objective/kl', 'loss/policy_avg', 'loss/value_avg', 'kl_coef', 'val/ratio'];
    const pick = (m: Record<string, number>) => keys.map((k) => m[k]);
    assert.deepEqual(resumed.map(pick), straight.map(pick));
    const lines = readFileSync(join(TMP, 'resumed', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; 'objective/scores'?: number });
    assert.deepEqual(lines.filter((l) => l['objective/scores'] !== undefined).map((l) => l.step), [1, 2, 3, 4]);
  });

  test('a NaN reward stops the run without touching the last checkpoint', async () => {
    const cfg = config('nan', { train: { max_steps: 1, eval_prompts: 2 } });
    await ppo(cfg, { quiet: true });
    const before = readFileSync(join(cfg.out_dir, 'manifest.json'), 'utf8');
    await assert.rejects(ppo({ ...cfg, train: { ...cfg.train, max_steps: 3 } }, { quiet: true, resume: true, reward: () => NaN }), (e: Error) => e instanceof NonFiniteLossError && /non-finite reward/.test(e.message));
    assert.equal(readFileSync(join(cfg.out_dir, 'manifest.json'), 'utf8'), before);
  });
});

describe('ppo variants', () => {
  test('GRPO: groups of G samples, first ratio 1, no value model', async () => {
    const firsts: number[] = [];
    const cfg = config('grpo', { algorithm: 'grpo', ppo: { epochs: 1, mini_batch_size: 8, kl: { coef: 0.04 } } });
    const r = await ppo(cfg, { quiet: true, onUpdate: (u) => u.minibatch === 0 && u.epoch === 0 && firsts.push(u.ratio) });
    assert.equal(firsts[0], 1);
    assert.ok(!existsSync(join(cfg.out_dir, VALUE_HEAD_FILE)));
    assert.ok(r.metrics['loss/value_avg'] === undefined);
    assert.equal(readManifest(cfg.out_dir).stage, 'grpo');
  });

  test('early stop: an epoch ends at the first mini-batch whose approx KL exceeds ppo.max_approx_kl', async () => {
    const seen: [number, number, number][] = [];
    const cfg = config('early', { ppo: { epochs: 2, mini_batch_size: 1, max_approx_kl: 1e-12 }, train: { max_steps: 1, eval_prompts: 1 } });
    await ppo(cfg, { quiet: true, onUpdate: (u) => seen.push([u.epoch, u.minibatch, u.approxKl]) });
    // epoch 0: mini-batch 0 is the rollout policy itself (approx KL 0), mini-batch 1 has moved: stop; epoch 1 stops at once.
    assert.deepEqual(seen.map(([e, m]) => [e, m]), [[0, 0], [0, 1], [1, 0]]);
    assert.equal(seen[0]![2], 0);
  });

  test('an SFT LoRA directory as the policy is merged into its base at load', async () => {
    const { initLora, saveAdapter } = await import('../src/model/lora.js');
    const { mkdirSync } = await import('node:fs');
    const dir = join(TMP, 'sft-lora');
    mkdirSync(dir, { recursive: true });
    const acfg = { r: 2, alpha: 4, dropout: 0, target_modules: ['q_proj'] };
    const { readModelConfig } = await import('../src/checkpoint/model.js');
    const lora = initLora(readModelConfig(BASE), acfg, 1);
    saveAdapter(dir, lora, acfg, BASE, readModelConfig(BASE));
    tf.dispose(Object.values(lora));
    const kls: number[] = [];
    const cfg = config('from-lora', { policy: dir, value: { shared: true }, train: { max_steps: 1, eval_prompts: 1 } });
    await ppo(cfg, { quiet: true, onStep: (_, m) => kls.push(m['objective/kl']!) });
    assert.equal(kls[0], 0);
    assert.equal(readManifest(cfg.out_dir).parent?.path, dir);
  });

  test('LoRA policy: only the adapter trains, the reference is the base with the adapter off (KL 0 at step 1); shared value head only', async () => {
    const kls: number[] = [];
    const cfg = config('lora', { lora: { r: 2, alpha: 4, target_modules: ['q', 'v'] }, value: { shared: true } });
    const r = await ppo(cfg, { quiet: true, onStep: (_, m) => kls.push(m['objective/kl']!) });
    assert.equal(kls[0], 0);
    assert.equal(r.trainableParams, 2 * (32 * 2 + 2 * 32) + 33, 'q,v adapters of one layer + the value head');
    assert.ok(!existsSync(join(cfg.out_dir, 'model.safetensors')), 'the base is not copied');
    const a = loadAdapter(cfg.out_dir);
    assert.equal(a.baseModel, BASE);
    for (const t of Object.values(a.lora)) t.dispose();
    assert.deepEqual(Object.keys(readSafetensors(join(cfg.out_dir, VALUE_HEAD_FILE)).tensors).sort(), ['v_head.bias', 'v_head.weight']);
  });
});

describe('ppo with a reward model', () => {
  const RM = join(TMP, 'rm');
  before(async () => {
    const { saveCheckpoint } = await import('../src/checkpoint/model.js');
    const ck = loadCheckpoint(BASE);
    const score = tf.tidy(() => tf.mul(tf.randomNormal([1, 32], 0, 1, 'float32', 3), 0.5));
    await saveCheckpoint(RM, { ...ck, heads: { 'score.weight': score }, stage: 'rm', stageConfig: {}, parentDir: BASE });
    tf.dispose([score, ...Object.values(ck.params)]);
  });

  test('RM score as the reward; the value model starts as the reward model (trunk + head); the RM is bit-identical after training', async () => {
    let rewardSame = false;
    const cfg = config('with-rm', { reward: { type: 'model', path: RM }, optim: { lr: 1e-9, warmup_steps: 0, schedule: 'constant', weight_decay: 0 }, train: { max_steps: 1, eval_prompts: 2 } });
    const scores: number[] = [];
    await ppo(cfg, {
      quiet: true,
      onStep: (_, m) => scores.push(m['objective/scores']!),
      inspect: ({ reward }) => {
        const disk = loadCheckpoint(RM, { heads: true });
        rewardSame = Object.keys(disk.params).every((k) => same(reward![k]!, disk.params[k]!)) && same(reward!['score.weight']!, disk.heads!['score.weight']!);
        tf.dispose([...Object.values(disk.params), ...Object.values(disk.heads!)]);
      },
    });
    assert.ok(rewardSame);
    assert.ok(Number.isFinite(scores[0]) && scores[0] !== 0);
    const value = readSafetensors(join(cfg.out_dir, VALUE_HEAD_FILE)).tensors;
    // The RM's file has Hugging Face names; read it through the checkpoint loader for ours.
    const { loadCheckpoint: load } = await import('../src/checkpoint/model.js');
    const rmCk = load(RM, { heads: true });
    const head = Array.from(value['v_head.weight']!.data as Float32Array), score = Array.from(rmCk.heads!['score.weight']!.dataSync());
    head.forEach((v, i) => assert.ok(Math.abs(v - score[i]!) < 1e-6, `v_head[${i}] ${v} vs score ${score[i]}`));
    const trunk = Array.from(value['value_model.ln_f.weight']!.data as Float32Array), rmLn = Array.from(rmCk.params['ln_f.weight']!.dataSync());
    trunk.forEach((v, i) => assert.ok(Math.abs(v - rmLn[i]!) < 1e-6));
    tf.dispose([...Object.values(rmCk.params), ...Object.values(rmCk.heads!)]);
  });

  test('a reward model with another tokenizer is an error unless reward.retokenize scores the decoded text', async () => {
    const { saveCheckpoint } = await import('../src/checkpoint/model.js');
    const other = join(TMP, 'rm-other');
    const ck = loadCheckpoint(RM, { heads: true });
    await saveCheckpoint(other, { ...ck, tokenizer: Tokenizer.train(['another corpus, another tokenizer'], { vocabSize: 512 }), heads: ck.heads, stage: 'rm', stageConfig: {}, parentDir: null });
    tf.dispose([...Object.values(ck.params), ...Object.values(ck.heads!)]);
    await assert.rejects(ppo(config('rm-bad', { reward: { type: 'model', path: other } }), { quiet: true }), /rm-other: reward: the reward model's tokenizer differs from the policy's .*reward\.retokenize/);
    const scores: number[] = [];
    await ppo(config('rm-retok', { algorithm: 'grpo', reward: { type: 'model', path: other, retokenize: true }, train: { max_steps: 1, eval_prompts: 2 } }), { quiet: true, onStep: (_, m) => scores.push(m['objective/scores']!) });
    assert.ok(Number.isFinite(scores[0]));
  });
});

describe('ppo bad input', () => {
  test('an empty prompt file, a prompt longer than the context, a reference with another tokenizer: one-line errors naming the file', async () => {
    const empty = join(TMP, 'empty.jsonl');
    writeFileSync(empty, '\n');
    await assert.rejects(ppo(config('bad1', { prompts: { path: empty } }), { quiet: true }), /empty\.jsonl: no prompts/);
    const long = join(TMP, 'long.jsonl');
    writeFileSync(long, JSON.stringify({ prompt: 'short' }) + '\n' + JSON.stringify({ prompt: 'word '.repeat(200) }) + '\n');
    await assert.rejects(ppo(config('bad2', { prompts: { path: long } }), { quiet: true }), /long\.jsonl: line 2: the prompt has \d+ tokens; with rollout\.max_new_tokens 6 that exceeds the context length 64/);
    const other = join(TMP, 'other');
    const { saveCheckpoint } = await import('../src/checkpoint/model.js');
    const ck = loadCheckpoint(BASE);
    await saveCheckpoint(other, { ...ck, tokenizer: Tokenizer.train(['a different corpus entirely'], { vocabSize: 512 }), stage: 'test', stageConfig: {}, parentDir: null });
    for (const t of Object.values(ck.params)) t.dispose();
    await assert.rejects(ppo(config('bad3', { reference: other }), { quiet: true }), /other: reference: its tokenizer differs from the policy's/);
    assert.ok(!existsSync(join(TMP, 'bad1')) && !existsSync(join(TMP, 'bad3')), 'nothing written');
  });
});

describe('llmctl ppo (CLI)', () => {
  const cli = (args: string[]) => new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'ppo', ...args, '--backend', 'wasm', '--log-level', 'silent'], { cwd: REPO, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  const yaml = (out: string, prompts: string) => {
    const path = join(TMP, `${out}.yaml`);
    writeFileSync(path, [
      `policy: ${BASE}`, 'reward: {type: regex, pattern: "[aeiou]{2}"}', `prompts: {path: ${prompts}, eval_fraction: 0.2}`,
      'rollout: {batch_size: 2, max_new_tokens: 4}', 'ppo: {epochs: 1, mini_batch_size: 2}', 'value: {shared: true}',
      'train: {max_steps: 2, eval_prompts: 2}', `out_dir: ${join(TMP, out)}`, '',
    ].join('\n'));
    return path;
  };

  test('a run prints its summary as JSON; bad input is one line on stderr with exit code 2', async () => {
    const ok = await cli(['--config', yaml('cli-ok', PROMPTS), '--json']);
    assert.equal(ok.code, 0, ok.stderr);
    const summary = JSON.parse(ok.stdout) as Record<string, number>;
    assert.equal(summary.steps, 2);
    assert.equal(summary.eval_kl_before, 0);
    const empty = join(TMP, 'cli-empty.jsonl');
    writeFileSync(empty, '');
    const bad = await cli(['--config', yaml('cli-bad', empty)]);
    assert.equal(bad.code, 2);
    assert.deepEqual(bad.stderr.trim().split('\n'), [`llmctl ppo: ${empty}: no prompts (empty file)`]);
    const typo = await cli(['--config', yaml('cli-typo', PROMPTS), '--set', 'ppo.clip_range=0.1']);
    assert.equal(typo.code, 2);
    assert.equal(typo.stderr, 'llmctl ppo: --set ppo.clip_range=0.1: ppo.clip_range: unknown key\n');
  });
});
