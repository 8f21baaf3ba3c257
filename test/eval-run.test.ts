/**
 * The eval runner on real models: the imported stories260K (Llama, sentencepiece, n_ctx 512) and a tiny
 * random GPT-2 with n_ctx 24 (so every few-shot prompt is cut from the left). Shared-context KV reuse gives
 * the same log-likelihoods as full sequences and as a hand-rolled log-softmax; no tensors leak; the results
 * JSON has lm-eval's shape; HumanEval's sandbox passes canonical solutions and kills bad programs.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { resultsJson } from '../src/eval/results.js';
import { DEFAULT_EVAL_OPTIONS, type EvalOptions, evaluate, scoreHumaneval } from '../src/eval/runner.js';
import { encodePair, fitContext, rollingLoglik, scoreGroupShared, scoreGroupsShared, scoreGroupsUnshared } from '../src/eval/loglik.js';
import { DEFAULT_SANDBOX, pythonUnavailable, runPrograms } from '../src/eval/sandbox.js';
import { type GenTask, type McTask, buildContext, loadTask } from '../src/eval/tasks.js';
import type { LanguageModel } from '../src/model/generate.js';
import { forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');
const FIX = new URL('./fixtures/eval/', import.meta.url).pathname;
const stories: LanguageModel = importLlama2c(STORIES_BIN, TOK512_PATH);
const tinyConfig = resolveModelConfig({ arch: 'gpt2', vocab_size: 300, n_ctx: 24, n_layer: 2, n_embd: 16, n_head: 2 });
const tiny: LanguageModel = { params: initParams(tinyConfig, 7), config: tinyConfig, tokenizer: Tokenizer.train(['The quick brown fox jumps over the lazy dog. Question: Answer: A B C D'], { vocabSize: 300 }) };
const opts = (o: Partial<EvalOptions> = {}): EvalOptions => ({ ...DEFAULT_EVAL_OPTIONS, ...o });
/** HumanEval needs python3; without it those tests are skipped (the skip path itself is tested below). */
const noPython = pythonUnavailable('python3') ?? false;

/** Σ log p(continuation | context) from one plain forward pass and tf.logSoftmax: the reference. */
function referenceLoglik(model: LanguageModel, ctx: number[], cont: number[]): number {
  return tf.tidy(() => {
    const all = [...ctx, ...cont].slice(-(model.config.n_ctx + 1));
    const n = Math.min(cont.length, all.length - 1); // a continuation longer than the window: its last n tokens
    const input = tf.tensor2d([all.slice(0, -1)], [1, all.length - 1], 'int32');
    const logp = tf.logSoftmax(forward(model.params, model.config, input).logits).arraySync() as number[][][];
    let s = 0;
    for (let j = 0; j < n; j++) {
      const pos = all.length - 1 - n + j;
      s += logp[0]![pos]![all[pos + 1]!]!;
    }
    return s;
  });
}

describe('log-likelihoods', () => {
  test('encodePair moves the context\'s trailing spaces into the continuation (the harness\'s _encode_pair)', () => {
    const a = encodePair(stories, 'Answer: ', 'B'), b = encodePair(stories, 'Answer:', ' B');
    assert.deepEqual(a, b);
    assert.equal(a.context[0], stories.tokenizer.bosId); // sentencepiece models get BOS, as they were trained
    assert.deepEqual([...a.context, ...a.continuation].slice(1), stories.tokenizer.encode('Answer: B'));
  });

  for (const [label, model] of [['stories260K', stories], ['tiny GPT-2, n_ctx 24 (prompts cut from the left)', tiny]] as const) {
    test(`${label}: shared-context KV reuse = full sequences = a plain log-softmax, for every choice`, () => {
      const t = loadTask('arc_easy', FIX + 'arc/arc_easy.jsonl') as McTask;
      const mmlu = loadTask('mmlu', FIX + 'mmlu') as McTask;
      const docs: [McTask, number][] = [[t, 0], [t, 2], [mmlu, 0]]; // MMLU 5-shot: one-token choices " A".." D"
      const groups = docs.map(([task, i]) => {
        const ctx = buildContext(task, task.docs[i]!, task.defaultFewshot);
        const pairs = task.docs[i]!.choices.map((c) => encodePair(model, ctx, ' ' + c));
        return { context: pairs[0]!.context, continuations: pairs.map((p) => p.continuation) };
      });
      const unshared = scoreGroupsUnshared(model, groups, 3);
      // Contexts of different lengths batched together: each choice reads only its own context's positions.
      const batched = scoreGroupsShared(model, groups, 3);
      groups.forEach((g, gi) => {
        const shared = scoreGroupShared(model, g);
        const ctx = fitContext(g.context, g.continuations, model.config.n_ctx);
        g.continuations.forEach((c, ci) => {
          const ref = referenceLoglik(model, ctx, c);
          assert.ok(Math.abs(shared[ci]!.ll - ref) < 2e-3, `shared ${shared[ci]!.ll} vs ${ref}`);
          assert.ok(Math.abs(unshared[gi]![ci]!.ll - ref) < 2e-3, `unshared ${unshared[gi]![ci]!.ll} vs ${ref}`);
          assert.ok(Math.abs(batched[gi]![ci]!.ll - ref) < 2e-3, `shared, batched ${batched[gi]![ci]!.ll} vs ${ref}`);
          assert.equal(shared[ci]!.isGreedy, unshared[gi]![ci]!.isGreedy);
          assert.ok(ref < 0);
        });
      });
    });
  }

  test('no tensor leaks across requests (shared, unshared, rolling)', () => {
    const t = loadTask('hellaswag', FIX + 'hellaswag/hellaswag_val_6line.txt') as McTask;
    const g = (() => {
      const pairs = t.docs[0]!.choices.map((c) => encodePair(stories, t.docs[0]!.text, ' ' + c));
      return { context: pairs[0]!.context, continuations: pairs.map((p) => p.continuation) };
    })();
    scoreGroupShared(stories, g);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      scoreGroupShared(stories, g);
      scoreGroupsShared(stories, [g, g], 2);
      scoreGroupsUnshared(stories, [g, g], 3);
      rollingLoglik(tiny, 'the quick brown fox jumps over the lazy dog again and again', 8, 4);
    }
    assert.equal(tf.memory().numTensors, before);
  });

  test('rolling perplexity: windows of any stride score each token once; with the text inside one window every stride agrees', () => {
    const text = 'Once upon a time there was a cat.';
    const one = rollingLoglik(stories, text, 512, 4);
    const ids = [stories.tokenizer.bosId!, ...stories.tokenizer.encode(text)];
    assert.equal(one.tokens, ids.length - 1);
    assert.ok(Math.abs(one.ll - referenceLoglik(stories, [ids[0]!], ids.slice(1))) < 1e-3);
    for (const stride of [3, 5]) assert.ok(Math.abs(rollingLoglik(stories, text, stride, 4).ll - one.ll) < 1e-3);
    // Past the window (tiny: n_ctx 24) a smaller stride gives each token more context, so a different (finite) total.
    const long = 'the quick brown fox jumps over the lazy dog '.repeat(4);
    const disjoint = rollingLoglik(tiny, long, 24, 4), sliding = rollingLoglik(tiny, long, 6, 4);
    assert.equal(disjoint.tokens, sliding.tokens);
    assert.ok(Number.isFinite(disjoint.ll) && Number.isFinite(sliding.ll) && disjoint.ll !== sliding.ll);
  });
});

describe('evaluate', () => {
  const tasks = () => [
    loadTask('mmlu', FIX + 'mmlu'), loadTask('hellaswag', FIX + 'hellaswag/hellaswag_val_6line.txt'), loadTask('arc_challenge', FIX + 'arc/arc_challenge.jsonl'),
    loadTask('truthfulqa_mc1', FIX + 'truthfulqa/mc_task.json'), loadTask('truthfulqa_mc2', FIX + 'truthfulqa/mc_task.json'),
  ];

  test('every multiple-choice task on stories260K: lm-eval JSON shape, the same numbers with and without KV reuse, stable prompt hashes', async () => {
    const a = await evaluate(stories, tasks(), opts({ limit: 1, logSamples: true }));
    const b = await evaluate(stories, tasks(), opts({ limit: 1, shareContext: false, batchSize: 4 }));
    const json = resultsJson(a, { checkpoint: 'x', manifestSha256: null, batchSize: 8, limit: 1, shareContext: true, seconds: 1, versions: {} }) as Record<string, Record<string, Record<string, unknown>>>;
    for (const name of ['mmlu', 'mmlu_anatomy', 'hellaswag', 'arc_challenge', 'truthfulqa_mc1', 'truthfulqa_mc2']) {
      const r = json.results![name]!;
      assert.equal(typeof r['acc,none'], 'number', name);
      assert.ok('acc_stderr,none' in r, name);
    }
    assert.equal(typeof json.results!.hellaswag!['acc_norm,none'], 'number');
    assert.deepEqual(json['n-samples']!.mmlu, { original: 6, effective: 1 }); // limit applies per task (1 of 6 MMLU items)
    assert.equal(json['n-shot']!.mmlu as unknown, 5);
    assert.deepEqual(json.group_subtasks!.mmlu as unknown, ['mmlu_anatomy']); // the first item is anatomy's
    for (let i = 0; i < a.tasks.length; i++) {
      assert.equal(a.tasks[i]!.promptHash, b.tasks[i]!.promptHash);
      for (const [k, v] of Object.entries(a.tasks[i]!.metrics)) if (typeof v === 'number' && !k.includes('stderr')) assert.ok(Math.abs(v - (b.tasks[i]!.metrics[k] as number)) < 1e-6, `${a.tasks[i]!.name} ${k}`);
    }
    const s = a.tasks[0]!.samples[0] as { prompt: string; choices: string[]; filtered_resps: number[]; prediction: number; gold: number };
    assert.ok(s.prompt.endsWith('\nAnswer:') && s.choices.length === 4 && s.filtered_resps.length === 4);
    assert.equal(s.prediction, s.filtered_resps.indexOf(Math.max(...s.filtered_resps)));
    const choices = tasks().reduce((n, t) => n + (t as McTask).docs.slice(0, 1).reduce((m, d) => m + d.choices.length, 0), 0);
    assert.equal(a.throughput.loglik_requests, choices);
    // Each context runs once instead of once per choice: far fewer positions through the model.
    assert.ok(a.throughput.tokens_run * 2 < b.throughput.tokens_run, `shared ${a.throughput.tokens_run} vs unshared ${b.throughput.tokens_run} positions`);
    assert.ok(a.throughput.forwards <= 2 * 5, `shared: ${a.throughput.forwards} forwards for 5 questions`);
  });

  test('GSM8K and HumanEval generate (greedy, stop sequences) and score; missing python3 skips HumanEval only', async () => {
    const gsm = loadTask('gsm8k', FIX + 'gsm8k/test.jsonl') as GenTask;
    const he = loadTask('humaneval', FIX + 'humaneval/HumanEval.jsonl.gz') as GenTask;
    const run = await evaluate(stories, [gsm, he], opts({ limit: 1, gsm8kMaxTokens: 16, humaneval: { ...DEFAULT_EVAL_OPTIONS.humaneval, maxTokens: 16 }, logSamples: true }));
    const [g, h] = run.tasks as [typeof run.tasks[0], typeof run.tasks[0]];
    assert.ok([0, 1].includes(g.metrics['exact_match,strict-match'] as number) && 'exact_match,flexible-extract' in g.metrics);
    if (!noPython) assert.equal(h.metrics['pass@1,create_test'], 0); // stories260K writes stories, not Python
    assert.ok(run.throughput.generated_tokens > 0 && run.throughput.generated_tokens <= 32);
    const comp = (g.samples[0] as { resps: string[] }).resps[0]!;
    assert.ok(!comp.includes('Question:'), 'generation stops at "Question:"');
    const skipped = await evaluate(stories, [loadTask('arc_easy', FIX + 'arc/arc_easy.jsonl'), he], opts({ limit: 1, sandbox: { ...DEFAULT_SANDBOX, python: '/nonexistent/python3' } }));
    assert.match(skipped.tasks[1]!.skipped!, /^HumanEval skipped: \/nonexistent\/python3 not found/);
    assert.equal(typeof skipped.tasks[0]!.metrics['acc,none'], 'number');
  });
});

describe('HumanEval sandbox', () => {
  const he = loadTask('humaneval', FIX + 'humaneval/HumanEval.jsonl.gz') as GenTask;

  test('canonical solutions as completions give pass@1 = 1.0; an empty body gives 0.0', { skip: noPython }, async () => {
    const ok = await scoreHumaneval(he.docs, he.docs.map((d) => [d.canonical!]), [1], DEFAULT_SANDBOX);
    assert.deepEqual(ok.runs.filter((r) => !r.passed).map((r) => r.result), []);
    assert.equal(ok.perDoc.reduce((s, d) => s + d['pass@1']!, 0) / he.docs.length, 1);
    const empty = await scoreHumaneval(he.docs, he.docs.map(() => ['']), [1], DEFAULT_SANDBOX);
    assert.equal(empty.perDoc.reduce((s, d) => s + d['pass@1']!, 0), 0);
  });

  test('endless loops, unbounded allocation, output floods and network use fail without harming the others', { skip: noPython }, async () => {
    const o = { ...DEFAULT_SANDBOX, timeoutMs: 1500, memoryBytes: 256 * 2 ** 20, outputBytes: 4096, workers: 2 };
    const t0 = performance.now();
    const r = await runPrograms([
      'while True:\n    pass\n',
      'x = []\nwhile True:\n    x.append(bytearray(10**7))\n',
      'while True:\n    print("spam" * 100)\n',
      'import socket\nsocket.socket().connect(("127.0.0.1", 9))\n',
      'import os\nos.system("echo hi")\n',
      'assert sum(range(10)) == 45\n',
    ], o);
    assert.equal(r[0]!.result, 'timed out');
    assert.ok(!r[1]!.passed && /MemoryError|killed|timed out/.test(r[1]!.result), r[1]!.result);
    assert.equal(r[2]!.result, 'output limit');
    assert.match(r[3]!.result, /PermissionError: blocked in the HumanEval sandbox/);
    assert.match(r[4]!.result, /PermissionError/);
    assert.deepEqual(r[5], { ...r[5]!, passed: true, result: 'passed' });
    assert.ok(performance.now() - t0 < 15_000);
  });
});
