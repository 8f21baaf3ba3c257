/**
 * The serving engine below the HTTP layer: block accounting (free list, copy-on-write, prefix cache),
 * paged attention against the contiguous KV-cache path, greedy tokens alone vs inside a batch of 16 mixed
 * requests, and 1,000 requests with cancellations and preemptions that leave every block free and the
 * tensor count where it started.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { disposeParams } from '../src/checkpoint/model.js';
import { generate } from '../src/model/generate.js';
import { type ModelConfig, type Params, emptyCache, disposeCache, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { chatPromptIds } from '../src/model/prompt.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { initLora } from '../src/model/lora.js';
import { applyPresenceFrequencyPenalty, logSoftmax, topLogprobs } from '../src/model/sample.js';
import { BlockManager } from '../src/serve/block-manager.js';
import { type ChoiceDelta, Engine, type EngineConfig, type SamplingParams } from '../src/serve/engine.js';
import { ModelRunner } from '../src/serve/model-runner.js';
import { generateOffline } from '../src/serve/offline.js';
import { KvPool } from '../src/serve/paged-attention.js';
import { STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');

const stories = importLlama2c(STORIES_BIN, TOK512_PATH);
after(() => disposeParams(stories.params));

const GREEDY: SamplingParams = { max_tokens: 16, temperature: 0, top_p: 1, top_k: 0, repetition_penalty: 1, presence_penalty: 0, frequency_penalty: 0, stop: [], n: 1 };
const ENGINE: EngineConfig = { num_blocks: 64, block_size: 16, max_num_seqs: 16, max_num_batched_tokens: 256, prefix_caching: true };

function engineFor(cfg: Partial<EngineConfig> = {}, params: Params = stories.params): Engine {
  const e = new Engine(stories.config, stories.tokenizer, new Map([['', { params }]]), { ...ENGINE, ...cfg });
  e.autoRun = false;
  return e;
}

interface Collected { ids: number[][]; text: string[]; finish: (string | undefined)[]; done: boolean; usage?: { prompt_tokens: number; completion_tokens: number } }

function submit(e: Engine, id: string, prompt: number[], params: Partial<SamplingParams> = {}): Collected {
  const p = { ...GREEDY, ...params };
  const c: Collected = { ids: Array.from({ length: p.n }, () => []), text: Array(p.n).fill(''), finish: Array(p.n).fill(undefined), done: false };
  e.add({ id, promptIds: prompt, params: { ...p, logprobs: p.logprobs ?? 0 }, model: '' }, {
    onDelta: (d: ChoiceDelta) => {
      c.text[d.index] += d.text;
      c.ids[d.index]!.push(...d.logprobs.map((l) => l.id));
      if (d.finishReason) c.finish[d.index] = d.finishReason;
    },
    onFinish: (u) => {
      c.done = true;
      c.usage = u;
    },
    onError: (err) => assert.fail(err),
  });
  return c;
}

function drain(e: Engine, maxSteps = 10_000): number {
  let steps = 0;
  while (e.hasWork() && steps < maxSteps) {
    e.step();
    steps++;
  }
  assert.ok(!e.hasWork(), `engine still busy after ${maxSteps} steps`);
  return steps;
}

const encode = (s: string) => stories.tokenizer.encode(s, { addBos: true });

describe('block manager', () => {
  test('allocation, fork and copy-on-write, free list (4 blocks of 2 slots)', () => {
    const bm = new BlockManager(4, 2);
    const copies: [number, number][] = [];
    bm.onCopy = (from, to) => copies.push([from, to]);
    const a: number[] = [];
    bm.ensureCapacity(a, 3); // positions 0..2 → 2 blocks
    assert.deepEqual(a, [0, 1]);
    assert.equal(bm.numFree, 2);
    const b = bm.fork(a); // shares both
    assert.equal(bm.numFree, 2);
    // b writes position 3: block 1 (positions 2,3) is shared and partly filled → copied to a free block.
    assert.equal(bm.blocksNeeded(b, 3, 4), 1);
    bm.prepareWrite(b, 3, 4);
    assert.deepEqual(copies, [[1, 2]]);
    assert.deepEqual(b, [0, 2]);
    // a writes position 3 too: block 1 is now its own, no copy.
    bm.prepareWrite(a, 3, 4);
    assert.equal(copies.length, 1);
    // Position 4 needs a third block for a; then the pool is full.
    bm.prepareWrite(a, 4, 5);
    assert.equal(bm.numFree, 0);
    assert.throws(() => bm.prepareWrite(b, 4, 5), /no free KV blocks/);
    bm.freeAll(a);
    bm.freeAll(b);
    assert.equal(bm.numFree, 4);
    bm.check();
  });

  test('prefix cache: full blocks are found by chained hash, survive in the free list, and are evicted oldest first', () => {
    const bm = new BlockManager(3, 2);
    const tokens = [5, 6, 7, 8, 9];
    const hashes = bm.blockHashes(tokens, 'm'); // 2 full blocks
    assert.equal(hashes.length, 2);
    assert.notEqual(bm.blockHashes([5, 6, 7, 8], 'other')[0], hashes[0], 'the salt (adapter) is part of the hash');
    assert.notEqual(bm.blockHashes([1, 6, 7, 8], 'm')[1], hashes[1], 'a block hash names its whole prefix');
    const a: number[] = [];
    bm.ensureCapacity(a, 5);
    bm.register(a, hashes);
    bm.freeAll(a);
    assert.equal(bm.numFree, 3);
    const b: number[] = [];
    assert.equal(bm.adoptCached(b, hashes), 4);
    assert.deepEqual(b, a.length ? a : [0, 1]);
    assert.equal(bm.numFree, 1);
    bm.freeAll(b);
    // Taking all three blocks overwrites the cached ones: no hit afterwards.
    const c: number[] = [];
    bm.ensureCapacity(c, 6);
    bm.freeAll(c);
    assert.equal(bm.adoptCached([], hashes), 0);
    bm.check();
  });
});

describe('sampling extensions', () => {
  test('presence and frequency penalties: logit − presence·[seen] − frequency·count', () => {
    const l = Float32Array.from([1, 1, 1]);
    applyPresenceFrequencyPenalty(l, [0, 0, 2], 0.5, 0.25);
    assert.deepEqual(Array.from(l), [1 - 0.5 - 0.5, 1, 1 - 0.5 - 0.25]);
  });

  test('log-softmax of [0, ln 3] is [ln .25, ln .75]; top-2 sorted', () => {
    const lp = logSoftmax(Float32Array.from([0, Math.log(3), -1]));
    assert.ok(Math.abs(lp[0]! - Math.log(0.25 / (1 + Math.exp(-1) / 4))) < 1e-6);
    const top = topLogprobs(lp, 2);
    assert.deepEqual(top.map((t) => t.id), [1, 0]);
  });
});

/** Contiguous-cache logits of every position after the prompt (prefill, then one token at a time). */
function contiguousLogits(params: Params, config: ModelConfig, tokens: number[], promptLen: number, loraScale?: number): Float32Array[] {
  const cache = emptyCache(config);
  const rows: Float32Array[] = [];
  let at = 0;
  for (const len of [promptLen, ...Array(tokens.length - promptLen).fill(1)]) {
    const input = tf.tensor2d([tokens.slice(at, at + len)], [1, len], 'int32');
    const { logits } = forward(params, config, input, { cache, loraScale });
    const all = logits.dataSync() as Float32Array;
    for (let t = 0; t < len; t++) rows.push(all.slice(t * config.vocab_size, (t + 1) * config.vocab_size));
    input.dispose();
    logits.dispose();
    at += len;
  }
  disposeCache(cache);
  return rows;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('chat prompts', () => {
  test('a non-ChatML chat template from the checkpoint is rendered with Jinja, then encoded', () => {
    const saved = stories.tokenizer.chatTemplate;
    stories.tokenizer.chatTemplate = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    try {
      const ids = chatPromptIds(stories.tokenizer, [{ role: 'user', content: 'Hi Lily' }]);
      assert.deepEqual(ids, stories.tokenizer.encode('<s>user: Hi Lily\nassistant:', { allowSpecial: true }));
      assert.equal(ids[0], stories.tokenizer.bosId);
    } finally {
      stories.tokenizer.chatTemplate = saved;
    }
  });
});

describe('paged attention', () => {
  const cases: [string, ModelConfig, Params, number?][] = [
    ['llama (RoPE, GQA 8/4 heads): stories260K', stories.config, stories.params],
  ];
  const gptConfig = resolveModelConfig({ arch: 'gpt2', vocab_size: 300, n_ctx: 40, n_layer: 2, n_embd: 32, n_head: 4 });
  const gptParams = initParams(gptConfig, 3);
  after(() => disposeParams(gptParams));
  cases.push(['gpt2 (learned positions, biases): random', gptConfig, gptParams]);
  // A LoRA adapter on q/v (B non-zero) sends the blocks through the per-op path and its paged attention kernel.
  const lora = initLora(stories.config, { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj'] }, 5);
  for (const [name, t] of Object.entries(lora)) if (name.endsWith('lora_B')) {
      t.dispose();
      lora[name] = tf.randomNormal(t.shape, 0, 0.05, 'float32', 9);
    }
  after(() => disposeParams(lora));
  cases.push(['llama + LoRA q/v (per-op path, scale 2): stories260K', stories.config, { ...stories.params, ...lora }, 2]);

  for (const [name, config, params, loraScale] of cases) {
    test(`logits equal the contiguous KV-cache path: ${name}, two sequences interleaved in scattered blocks, chunked prefill`, () => {
      const seqA = [1, 17, 42, 99, 5, 250, 33, 7, 120, 64, 11, 3, 200, 18];
      const seqB = [1, 80, 81, 82, 83, 9, 9, 9, 40, 41];
      const refA = contiguousLogits(params, config, seqA, 9, loraScale);
      const refB = contiguousLogits(params, config, seqB, 4, loraScale);
      // Block size 3, and B's blocks taken between A's, so neither sequence's blocks are contiguous.
      const bm = new BlockManager(16, 3);
      const pool = new KvPool(config, 16, 3);
      const runner = new ModelRunner(config, new Map([['', { params, loraScale }]]), pool);
      const tabA: number[] = [], tabB: number[] = [];
      bm.ensureCapacity(tabB, 2);
      bm.ensureCapacity(tabA, 4);
      bm.ensureCapacity(tabB, 4);
      const got = new Map<string, Float32Array>();
      // Steps: A's prompt in chunks of 4+5 while B prefills 4, then both decode one token per step.
      const plan: [number, number, number, number][] = [[0, 4, 0, 4], [4, 5, 4, 1], ...Array.from({ length: 5 }, (_, i): [number, number, number, number] => [9 + i, 1, 5 + i, 1])];
      for (const [aStart, aCount, bStart, bCount] of plan) {
        bm.ensureCapacity(tabA, aStart + aCount);
        bm.ensureCapacity(tabB, bStart + bCount);
        const segs = [
          { blockTable: tabA, start: aStart, count: aCount, tokens: seqA.slice(aStart, aStart + aCount), variant: '', sample: true },
          { blockTable: tabB, start: bStart, count: bCount, tokens: seqB.slice(bStart, bStart + bCount), variant: '', sample: true },
        ];
        const out = runner.run(segs);
        got.set(`A${aStart + aCount - 1}`, out[0]!);
        got.set(`B${bStart + bCount - 1}`, out[1]!);
      }
      assert.ok(tabA.some((b, i) => i > 0 && b !== tabA[i - 1]! + 1), `A's blocks are scattered: ${tabA}`);
      let worst = 0, compared = 0;
      for (const [key, row] of got) {
        const pos = Number(key.slice(1));
        const ref = key[0] === 'A' ? refA[pos] : refB[pos];
        if (!ref) continue;
        worst = Math.max(worst, maxAbsDiff(row, ref));
        compared++;
      }
      assert.ok(compared >= 12, `compared ${compared} rows`);
      assert.ok(worst < 1e-4, `max |paged − contiguous| = ${worst}`);
    });
  }
});

describe('engine', () => {
  test('greedy tokens are identical alone and inside a batch of 16 mixed requests joining at different steps', () => {
    const prompts = ['Once upon a time', 'Lily and Tom went to the park', 'The cat', 'One day, a little bird', 'Sam had a red ball and he', 'The sun was'];
    // Alone: the one-sequence path (generate, contiguous KV cache) and the engine serving one request.
    const alone = prompts.map((p, i) => generate(stories, encode(p), { ...GREEDY, max_tokens: 12 + i, stop: [] }).ids);
    const e1 = engineFor({ max_num_seqs: 1 });
    const single = prompts.map((p, i) => submit(e1, `s${i}`, encode(p), { max_tokens: 12 + i }));
    drain(e1);
    assert.deepEqual(single.map((c) => c.ids[0]), alone);

    // Batch: 16 requests — the 6 greedy ones among sampled ones with other lengths, penalties and n — joining
    // every second step, with a small token budget so prompt chunks and decodes share steps.
    const e = engineFor({ max_num_batched_tokens: 20 });
    const batch: (Collected | undefined)[] = [];
    const fillers: Collected[] = [];
    let step = 0;
    for (let r = 0; r < 16; r++) {
      const g = r % 3 === 0 ? r / 3 : -1;
      if (g >= 0 && g < prompts.length) batch[g] = submit(e, `g${g}`, encode(prompts[g]!), { max_tokens: 12 + g });
      else fillers.push(submit(e, `f${r}`, encode('Once upon a time, there was a ' + 'big '.repeat(r % 5)), { temperature: 0.9, top_p: 0.9, max_tokens: 5 + (r % 7), seed: r, presence_penalty: 0.5, n: 1 + (r % 2) }));
      e.step();
      e.step();
      step += 2;
    }
    assert.ok(step > 0);
    assert.ok(e.numRunning > 1, 'requests overlap in the running batch');
    drain(e);
    assert.deepEqual(batch.map((c) => c!.ids[0]), alone);
    assert.ok(fillers.every((c) => c.done));
    assert.equal(e.blocks.numFree, ENGINE.num_blocks);
  });

  test('offline generation (eval\'s generate_until): 12 requests in order, greedy and seeded texts, stops and token counts equal generate()\'s', () => {
    const prompts = ['Once upon a time', 'Lily and Tom went to the park', 'The cat', 'One day, a little bird', 'Sam had a red ball and he', 'The sun was'];
    const greedy = { temperature: 0, top_p: 1, top_k: 0, repetition_penalty: 1 };
    const requests = prompts.flatMap((p, i) => [
      { promptIds: encode(p), ...greedy, max_tokens: 10 + i, stop: ['.'] },
      { promptIds: encode(p), temperature: 0.9, top_p: 1, top_k: 0, repetition_penalty: 1, max_tokens: 8, stop: [], seed: 40 + i },
    ]);
    const done: number[] = [];
    const got = generateOffline(stories, requests, { maxNumSeqs: 5, onDone: (i) => done.push(i) });
    assert.equal(got.length, requests.length);
    assert.deepEqual([...done].sort((a, b) => a - b), requests.map((_, i) => i));
    requests.forEach((r, i) => {
      const alone = generate(stories, r.promptIds, { ...r, seed: r.seed ?? 0 });
      assert.equal(got[i]!.text, alone.text, `request ${i}`);
      assert.equal(got[i]!.tokens, alone.ids.length, `request ${i} tokens`);
      assert.equal(got[i]!.finishReason, alone.finishReason, `request ${i} finish`);
    });
    assert.ok(got.some((g) => g.finishReason === 'stop') && got.some((g) => g.finishReason === 'length'), 'both ways to finish occur');
  });

  test('n > 1 choices share the prompt blocks; the partly filled last block is copied on write', () => {
    const e = engineFor({ block_size: 4, prefix_caching: false });
    const prompt = encode('Lily saw a big red ball'); // 9 tokens: 2 full blocks + 1 position
    assert.equal(prompt.length, 9);
    const c = submit(e, 'n4', prompt, { n: 4, temperature: 1, seed: 7, max_tokens: 6 });
    e.step(); // prefill + fork + first token of each choice
    const seqs = e.scheduler.running;
    assert.equal(seqs.length, 4);
    assert.ok(seqs.every((s) => s.blockTable.join() === seqs[0]!.blockTable.join()), 'all four share the three prompt blocks');
    assert.equal(e.blocks.numFree, ENGINE.num_blocks - 3);
    e.step(); // each writes position 9 into the shared third block: three copies (the last owner keeps it)
    const tables = e.scheduler.running.map((s) => s.blockTable);
    assert.ok(tables.every((t) => t[0] === tables[0]![0] && t[1] === tables[0]![1]), 'full prompt blocks stay shared');
    assert.equal(new Set(tables.map((t) => t[2])).size, tables.length, 'third blocks are private now');
    drain(e);
    assert.ok(c.done);
    assert.equal(c.usage!.completion_tokens, c.ids.reduce((n, ids) => n + ids.length, 0));
    assert.ok(new Set(c.text).size > 1, `choices differ: ${JSON.stringify(c.text)}`);
    assert.equal(e.blocks.numFree, ENGINE.num_blocks);
  });

  test('preempted sequences are recomputed and still give exactly the greedy tokens', () => {
    const prompts = ['Once upon a time', 'The cat', 'Lily and Tom went to the park', 'One day, a little bird'];
    const refs = prompts.map((p) => generate(stories, encode(p), { ...GREEDY, max_tokens: 14, stop: [] }).ids);
    // 8 blocks of 4 positions: room for about one of these sequences at a time, so the scheduler preempts.
    const e = engineFor({ num_blocks: 8, block_size: 4, prefix_caching: false });
    const got = prompts.map((p, i) => submit(e, `q${i}`, encode(p), { max_tokens: 14 }));
    drain(e);
    assert.ok(e.scheduler.numPreemptions > 0, 'preemptions happened');
    assert.deepEqual(got.map((c) => c.ids[0]), refs);
    assert.equal(e.blocks.numFree, 8);
  });

  test('prefix caching: a repeated prompt reuses its full blocks and gives the same tokens', () => {
    const e = engineFor({ block_size: 4 });
    const prompt = encode('Once upon a time, there was a little');
    const first = submit(e, 'p1', prompt, { max_tokens: 8 });
    drain(e);
    const hits = e.blocks.prefixHits;
    const second = submit(e, 'p2', prompt, { max_tokens: 8 });
    e.step();
    assert.equal(e.blocks.prefixHits - hits, Math.floor((prompt.length - 1) / 4));
    drain(e);
    assert.deepEqual(second.ids, first.ids);
  });

  test('1,000 requests with cancellations and preemptions: every block back in the free list, tensor count unchanged', () => {
    const e = engineFor({ num_blocks: 10, block_size: 4, max_num_seqs: 8, max_num_batched_tokens: 32 });
    const before = tf.memory().numTensors;
    const words = ['Once', ' upon', ' a', ' time', ' Lily', ' saw', ' a', ' big', ' dog'];
    const open = new Map<string, Collected>();
    let submitted = 0, cancelled = 0, finished = 0, steps = 0;
    const t0 = Date.now();
    while ((submitted < 1000 || e.hasWork()) && steps < 20_000) {
      // A few arrivals per step; identical prompts sometimes (prefix cache), n = 2 sometimes (fork/CoW).
      for (let k = 0; k < 3 && submitted < 1000; k++, submitted++) {
        const prompt = encode(words.slice(0, 2 + (submitted % 7)).join(''));
        open.set(`r${submitted}`, submit(e, `r${submitted}`, prompt, { max_tokens: 1 + (submitted % 4), n: submitted % 9 === 0 ? 2 : 1, temperature: submitted % 2 ? 0.8 : 0, seed: submitted }));
      }
      e.step();
      steps++;
      // Cancel every 7th request wherever it is (waiting, mid-prefill, decoding).
      for (const [id, c] of open) {
        if (c.done) {
          open.delete(id);
          finished++;
        } else if (Number(id.slice(1)) % 7 === 3 && e.abort(id)) {
          open.delete(id);
          cancelled++;
        }
      }
      e.blocks.check();
    }
    for (const [, c] of open) if (c.done) finished++;
    assert.equal(submitted, 1000);
    assert.equal(finished + cancelled, 1000, `finished ${finished} + cancelled ${cancelled}`);
    assert.ok(cancelled > 50, `cancelled ${cancelled}`);
    assert.ok(e.scheduler.numPreemptions > 0, 'the 10-block pool forced preemptions');
    assert.equal(e.numRequests, 0);
    assert.equal(e.blocks.numFree, 10);
    e.blocks.check();
    assert.equal(tf.memory().numTensors, before);
    console.log(`# 1000 requests: ${steps} steps, ${cancelled} cancelled, ${e.scheduler.numPreemptions} preemptions, ${e.blocks.prefixHits} prefix-cache block hits, ${Date.now() - t0} ms`);
  });
});
