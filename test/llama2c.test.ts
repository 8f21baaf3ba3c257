/**
 * llama2.c import (src/model/llama2c.ts) checked against run.c's published outputs for stories260K:
 * greedy and seeded top-p sampling must reproduce the reference text exactly, token for token.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { type Generation, type LanguageModel, generate } from '../src/model/generate.js';
import { countParams } from '../src/model/gpt.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { promptIds } from '../src/model/prompt.js';
import { STORIES_BIN, STORIES_EXPECTED, TOK512_PATH } from './paths.js';

await initBackend('wasm');

interface Case {
  id: string;
  prompt: string;
  temperature: number;
  topp?: number;
  seed?: number | null;
  steps: number;
  expected_text: string;
  first_40_output_token_ids_computed?: number[];
  prompt_token_ids_computed?: number[];
}

const CASES = (JSON.parse(readFileSync(STORIES_EXPECTED, 'utf8')) as { cases: Case[] }).cases;
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-llama2c-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

/** run.c semantics: `steps` counts positions after BOS including the prompt, so the model samples
 * steps − promptIds.length + 1 tokens; the printed text is the prompt followed by the generated text. */
function runCase(model: LanguageModel, c: Case): { text: string; ids: number[]; prompt: number[]; g: Generation } {
  const prompt = model.tokenizer.encode(c.prompt, { addBos: true });
  const g = generate(model, prompt, {
    max_tokens: c.steps - prompt.length + 1,
    stop: [],
    temperature: c.temperature,
    top_p: c.topp ?? 0.9, // run.c's default -p 0.9 (only used when temperature > 0)
    top_k: 0,
    repetition_penalty: 1,
    seed: c.seed ?? undefined,
  });
  return { text: c.prompt + g.text, ids: g.ids, prompt, g };
}

describe('stories260K import', () => {
  const model = importLlama2c(STORIES_BIN, TOK512_PATH);
  after(() => disposeParams(model.params));

  test('header → config: 5 layers, dim 64, 8 heads over 4 kv heads, hidden 172, vocab 512, seq 512, tied', () => {
    assert.deepEqual(
      { ...model.config },
      { arch: 'llama', vocab_size: 512, n_ctx: 512, n_layer: 5, n_embd: 64, n_head: 8, n_kv_head: 4, n_inner: 172, norm_eps: 1e-5, rope_theta: 10000, tie_embeddings: true, bias: false, dropout: 0 },
    );
    // 260K parameters (the model's name): 512·64 + 5·(2·64 + 64·64·2 + 64·32·2 + 3·172·64) + 64
    assert.equal(countParams(model.config), 512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64) + 64);
    assert.equal(model.tokenizer.vocabSize, 512);
    assert.equal(model.tokenizer.bosId, 1);
    assert.equal(model.tokenizer.eosId, 2);
    // promptIds (what `generate` uses) adds BOS for this tokenizer, like run.c.
    assert.deepEqual(promptIds(model.tokenizer, 'Zoo'), model.tokenizer.encode('Zoo', { addBos: true }));
  });

  for (const c of CASES) {
    test(`${c.id}: reproduces run.c's output exactly`, () => {
      const r = runCase(model, c);
      if (c.prompt_token_ids_computed) assert.deepEqual(r.prompt, c.prompt_token_ids_computed, 'prompt ids');
      if (c.first_40_output_token_ids_computed) assert.deepEqual(r.ids.slice(0, 40), c.first_40_output_token_ids_computed, 'first 40 ids');
      assert.equal(r.text, c.expected_text);
      // None of these references stops early: every step was used.
      assert.equal(r.g.finishReason, 'length');
      assert.equal(r.ids.length, c.steps - r.prompt.length + 1);
      // The streamed text equals the decode of the ids (sentencepiece drops the prefix space after BOS).
      assert.equal(model.tokenizer.decode([...r.prompt, ...r.ids]), c.expected_text);
    });
  }

  test('a different seed gives a different sample (the seeded case is not greedy in disguise)', () => {
    const c = CASES.find((x) => x.seed)!;
    const r = runCase(model, { ...c, seed: c.seed! + 1, steps: 64 });
    assert.notEqual(r.text, c.expected_text.slice(0, r.text.length));
  });

  test('import → saveCheckpoint → loadCheckpoint gives the same weights and the same greedy text', async () => {
    const dir = join(TMP, 'stories260K');
    await saveCheckpoint(dir, { config: model.config, params: model.params, tokenizer: model.tokenizer, stage: 'import', stageConfig: { format: 'llama2c' }, parentDir: null });
    const ck = loadCheckpoint(dir);
    assert.deepEqual(ck.config, model.config);
    for (const [k, t] of Object.entries(model.params)) assert.deepEqual(ck.params[k]!.dataSync(), t.dataSync(), k);
    const zoo = CASES.find((x) => x.id === 'c64-readme-zoo')!;
    const r = runCase(ck, zoo);
    assert.equal(r.text, zoo.expected_text);
    assert.deepEqual(ck.tokenizer.encode(zoo.prompt, { addBos: true }), zoo.prompt_token_ids_computed);
    disposeParams(ck.params);
  });
});

describe('llama2.c import errors', () => {
  test('a truncated or non-llama2.c file is rejected with the path in the message', () => {
    const bin = readFileSync(STORIES_BIN);
    const short = join(TMP, 'short.bin');
    writeFileSync(short, bin.subarray(0, bin.length - 4));
    assert.throws(() => importLlama2c(short, TOK512_PATH), (e: Error) => e.message.startsWith(short) && /floats after the header/.test(e.message));
    const junk = join(TMP, 'junk.bin');
    writeFileSync(junk, Buffer.alloc(64, 0xff));
    assert.throws(() => importLlama2c(junk, TOK512_PATH), (e: Error) => e.message.startsWith(junk) && /not a llama2\.c model/.test(e.message));
    const tiny = join(TMP, 'tiny.bin');
    writeFileSync(tiny, Buffer.alloc(10));
    assert.throws(() => importLlama2c(tiny, TOK512_PATH), /too short for a llama2\.c header/);
  });
});
