/**
 * `llmctl eval` and `llmctl arena` as a user runs them (child processes on src/main.ts): a results file in
 * lm-eval's shape with samples beside it, one-line errors with exit code 2 for bad input, and an arena judged
 * by a reward-model checkpoint (score.weight, as llmctl rm writes it) that is read back and rated.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { sha256File } from '../src/checkpoint/dir.js';
import { createManifest, writeManifest } from '../src/checkpoint/manifest.js';
import { saveCheckpoint } from '../src/checkpoint/model.js';
import { EvalConfigSchema } from '../src/config/eval.js';
import { SCORE_WEIGHT, loadRewardModel } from '../src/eval/arena/judge.js';
import { lineageCorpora } from '../src/eval/contamination.js';
import { runEval } from '../src/eval/index.js';
import { initLora, loraScale, mergeAdapter, saveAdapter } from '../src/model/lora.js';
import { forward } from '../src/model/gpt.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { REPO, STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-eval-cli-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
const FIX = join(REPO, 'test/fixtures/eval');
const CKPT = join(TMP, 'stories'), NOTOK = join(TMP, 'notok'), RM = join(TMP, 'rm');

function llmctl(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: REPO, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  return new Promise((res, rej) => { child.on('error', rej); child.on('close', (code) => res({ code, stdout, stderr })); });
}
/** What the CLI printed itself (pino's JSON log lines removed). */
const said = (s: string) => s.split('\n').filter((l) => l && !l.startsWith('{')).join('\n');

before(async () => {
  const m = importLlama2c(STORIES_BIN, TOK512_PATH);
  const save = (dir: string) => saveCheckpoint(dir, { config: m.config, params: m.params, tokenizer: m.tokenizer, stage: 'import', stageConfig: {} });
  await save(CKPT);
  await save(NOTOK);
  rmSync(join(NOTOK, 'tokenizer.json'));
  // A reward model as llmctl rm writes it: the weights plus score.weight [1, n_embd] in model.safetensors.
  const score = tf.tensor2d(Float32Array.from({ length: m.config.n_embd }, (_, i) => Math.sin(i)), [1, m.config.n_embd]);
  await saveCheckpoint(RM, { config: m.config, params: m.params, heads: { [SCORE_WEIGHT]: score }, tokenizer: m.tokenizer, stage: 'rm', stageConfig: {} });
});

describe('llmctl eval', () => {
  test('results JSON (lm-eval shape, manifest hash, prompt hashes) and samples_<task>.jsonl', async () => {
    const out = join(TMP, 'res', 'r.json');
    const r = await llmctl('eval', '--checkpoint', CKPT, '--data-dir', FIX, '--tasks', 'arc_easy,truthfulqa_mc2', '--limit', '2', '--log-samples', '--out', out, '--log-level', 'warn');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /arc_easy .*acc_norm/);
    const j = JSON.parse(readFileSync(out, 'utf8')) as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(j.results!), ['arc_easy', 'truthfulqa_mc2']);
    assert.equal(j.config!.checkpoint_manifest_sha256, await sha256File(join(CKPT, 'manifest.json')));
    assert.match(String((j.prompt_hashes as Record<string, string>).arc_easy), /^[0-9a-f]{64}$/);
    const lines = readFileSync(join(TMP, 'res', 'samples_arc_easy.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; filtered_resps: number[] });
    assert.equal(lines.length, 2);
    assert.equal(lines[0]!.prompt, 'Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:');
    assert.equal(lines[0]!.filtered_resps.length, 4);
  });

  const bad: [string, string[], RegExp][] = [
    ['unknown task (the known ones listed)', ['--checkpoint', CKPT, '--tasks', 'arc_easy,mmlu_pro'], /^llmctl eval: tasks: unknown task 'mmlu_pro' \(known: mmlu, hellaswag, arc_easy, arc_challenge, truthfulqa_mc1, truthfulqa_mc2, gsm8k, humaneval, perplexity\)$/],
    ['malformed data file (file and line)', ['--checkpoint', CKPT, '--tasks', 'arc_easy', '--set', `paths.arc_easy=${join(FIX, 'gsm8k/test.jsonl')}`], /^llmctl eval: .*gsm8k\/test\.jsonl:1: field 'gold' is missing$|^llmctl eval: .*gsm8k\/test\.jsonl:1: field 'question' \(or question\.stem\) is missing$|^llmctl eval: .*gsm8k\/test\.jsonl:1: field 'choices' is missing$/],
    ['missing data file', ['--checkpoint', CKPT, '--tasks', 'gsm8k', '--data-dir', '/nonexistent'], /^llmctl eval: \/nonexistent\/gsm8k\/test\.jsonl: data file not found$/],
    ['checkpoint without a tokenizer', ['--checkpoint', NOTOK, '--tasks', 'arc_easy'], /^llmctl eval: .*notok\/tokenizer\.json: the checkpoint has no tokenizer; eval needs it to encode the prompts$/],
    ['--limit 0', ['--checkpoint', CKPT, '--tasks', 'arc_easy', '--limit', '0'], /^llmctl eval: --limit 0: limit: must be >= 1$/],
  ];
  for (const [what, args, message] of bad) {
    test(`bad input, one line and exit 2: ${what}`, async () => {
      const r = await llmctl('eval', ...(args.includes('--data-dir') ? [] : ['--data-dir', FIX]), ...args, '--log-level', 'warn');
      assert.equal(r.code, 2, r.stderr);
      assert.equal(said(r.stderr).split('\n').length, 1, r.stderr);
      assert.match(said(r.stderr), message);
    });
  }
});

describe('eval of other checkpoint kinds', () => {
  test('a LoRA adapter evaluates to the same numbers as the checkpoint with the adapter merged in', async () => {
    const m = importLlama2c(STORIES_BIN, TOK512_PATH);
    const lc = { r: 2, alpha: 4, dropout: 0, target_modules: ['q_proj', 'v_proj'] };
    const lora = initLora(m.config, lc, 3);
    for (const [k, t] of Object.entries(lora)) if (k.endsWith('lora_B')) { lora[k] = tf.randomNormal(t.shape, 0, 0.5, 'float32', 9); t.dispose(); }
    const adapterDir = join(TMP, 'adapter'), mergedDir = join(TMP, 'merged');
    mkdirSync(adapterDir, { recursive: true });
    saveAdapter(adapterDir, lora, lc, CKPT, m.config);
    await saveCheckpoint(mergedDir, { config: m.config, params: mergeAdapter(m.params, lora, loraScale(lc)), tokenizer: m.tokenizer, stage: 'lora-merge', stageConfig: {} });
    const cfg = (over: Record<string, unknown>) => EvalConfigSchema.parse({ tasks: ['arc_easy'], data_dir: FIX, limit: 3, log_samples: false, ...over });
    const viaAdapter = await runEval(cfg({ checkpoint: CKPT, adapter: adapterDir }));
    const viaDir = await runEval(cfg({ checkpoint: adapterDir })); // an adapter directory names its base
    const merged = await runEval(cfg({ checkpoint: mergedDir }));
    const lls = async (c: Record<string, unknown>) => ((await runEval(cfg({ ...c, log_samples: true, out: join(TMP, `o${Math.random()}`, 'r.json') }))).run.tasks[0]!.samples as { filtered_resps: number[] }[]).flatMap((x) => x.filtered_resps);
    const [a, b, c] = [await lls({ checkpoint: CKPT, adapter: adapterDir }), await lls({ checkpoint: mergedDir }), await lls({ checkpoint: CKPT })];
    a.forEach((x, i) => assert.ok(Math.abs(x - b[i]!) < 1e-3, `adapter ${x} vs merged ${b[i]}`));
    assert.ok(a.some((x, i) => Math.abs(x - c[i]!) > 1e-3), 'the adapter changes the log-likelihoods');
    assert.deepEqual(viaAdapter.run.tasks[0]!.metrics, merged.run.tasks[0]!.metrics);
    assert.deepEqual(viaDir.run.tasks[0]!.metrics, viaAdapter.run.tasks[0]!.metrics);
  });

  test('contamination data defaults to the training corpora named along the manifests\' lineage', async () => {
    const corpus = join(TMP, 'corpus.txt'), sft = join(TMP, 'sft.jsonl'), tokens = join(TMP, 'tokens');
    mkdirSync(tokens, { recursive: true });
    writeFileSync(corpus, 'text');
    writeFileSync(sft, '{"instruction": "x", "output": "y"}\n');
    writeFileSync(join(tokens, 'meta.json'), JSON.stringify({ format: 'llmctl-tokens', dtype: 'uint16', vocab_size: 512, eos_id: 0, splits: { train: { shards: [], tokens: 0 }, val: { shards: [], tokens: 0 } }, sources: [{ path: corpus, bytes: 4 }, { path: join(TMP, 'gone.txt'), bytes: 1 }] }));
    const fields = { metrics: {}, versions: { llmctl: '0', node: '0', tfjs: '0', backend: 'x' } };
    const p = join(TMP, 'lin-pre'), f = join(TMP, 'lin-sft');
    for (const d of [p, f]) mkdirSync(d, { recursive: true });
    writeManifest(p, await createManifest(p, { ...fields, stage: 'pretrain', parent: null, config: { data: { dir: tokens } } }, []));
    writeManifest(f, await createManifest(f, { ...fields, stage: 'sft', parent: { path: p, sha256: '' }, config: { data: { path: sft } } }, []));
    assert.deepEqual(lineageCorpora(f), { files: [sft, corpus], missing: [join(TMP, 'gone.txt')] });
  });
});

describe('llmctl arena', () => {
  test('reward model from disk (score.weight in model.safetensors): reward = last hidden state · w', () => {
    const rm = loadRewardModel(RM);
    const m = importLlama2c(STORIES_BIN, TOK512_PATH);
    const ids = m.tokenizer.encode('Once upon a time' + ' there was a cat', { addBos: true });
    const expected = tf.tidy(() => {
      const { hidden } = forward(m.params, m.config, tf.tensor2d([ids], [1, ids.length], 'int32'), { returnHidden: true });
      const h = (hidden!.arraySync() as number[][][])[0]![ids.length - 1]!;
      return h.reduce((s, x, i) => s + x * Math.sin(i), 0);
    });
    assert.ok(Math.abs(rm.score('Once upon a time', ' there was a cat') - expected) < 1e-4);
    rm.dispose();
  });

  test('models answer, the reward model judges both orders, ratings and battles are written', async () => {
    const prompts = join(TMP, 'prompts.txt'), out = join(TMP, 'arena');
    writeFileSync(prompts, 'Once upon a time\nThe cat\n');
    const r = await llmctl('arena', '--models', `base=${CKPT},same=${CKPT}`, '--prompts', prompts, '--judge', `rm:${RM}`, '--out', out, '--rounds', '50', '--set', 'sampling.max_tokens=8', '--log-level', 'warn');
    assert.equal(r.code, 0, r.stderr);
    const battles = readFileSync(join(out, 'battles.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { winner: string; swapped: boolean });
    assert.equal(battles.length, 4); // 2 prompts × 1 pair × 2 orders
    assert.deepEqual(battles.map((b) => b.winner), ['tie', 'tie', 'tie', 'tie']); // identical models, greedy: identical answers
    assert.ok(existsSync(join(out, 'ratings.json')) && existsSync(join(out, 'answers', 'base.jsonl')));
    assert.match(r.stdout, /Bradley–Terry/);
    const bogus = await llmctl('arena', '--judge', 'gpt4', '--log-level', 'warn');
    assert.equal(bogus.code, 2);
    assert.equal(said(bogus.stderr), "llmctl arena: judge: 'gpt4' is not rm:DIR, human or battles:FILE");
  });
});
