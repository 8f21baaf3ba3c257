/**
 * Our GGUF files in a real llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU binaries, nothing built or
 * downloaded): the exported stories260K loads, tokenizes like us, and decodes greedily to the same tokens
 * as our own forward — all of them for f32 and q8_0 (q8_0 against our model running the same Q8_0 weights);
 * for q4_0 the number of matching tokens is reported.
 *
 * node-llama-cpp lives in its own package (test/interop, ~730 MB of platform binaries), installed by .ci/run
 * with `npm ci --prefix test/interop`, never by the root install. Without it this file skips, saying so.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { initBackend } from '../src/backend/index.js';
import { disposeParams } from '../src/checkpoint/model.js';
import { generate } from '../src/model/generate.js';
import { type Params, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { type ExportType, fromGguf, toGguf } from '../src/quant/gguf-model.js';
import { readGguf, writeGguf } from '../src/quant/gguf.js';
import { REPO, SHAKESPEARE_PATH, STORIES_BIN, TOK512_PATH } from './paths.js';

const NODE_LLAMA_CPP = join(REPO, 'test/interop/node_modules/node-llama-cpp/dist/index.js');
const skip = existsSync(NODE_LLAMA_CPP) ? false : 'node-llama-cpp is not installed: run `npm ci --prefix test/interop` (.ci/run does) to check our GGUF files in llama.cpp';

const N = 200;
const PROMPT = 'Once upon a time';

describe('GGUF in llama.cpp (node-llama-cpp 3.21.1)', { skip }, () => {
  const TMP = mkdtempSync(join(tmpdir(), 'llmctl-llamacpp-'));
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let llama: any;
  const m = importLlama2c(STORIES_BIN, TOK512_PATH);
  const promptIds = m.tokenizer.encode(PROMPT, { addBos: true });
  const greedy = { max_tokens: N, stop: [], temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, seed: 1 };

  before(async () => {
    await initBackend('wasm');
    const { getLlama } = await import(pathToFileURL(NODE_LLAMA_CPP).href);
    llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
  });
  after(async () => {
    disposeParams(m.params);
    await llama?.dispose();
    rmSync(TMP, { recursive: true, force: true });
  });

  /** Greedy tokens of llama.cpp from the file; one thread (spinning threads stall on a busy 2-core machine). */
  async function llamaCpp(path: string): Promise<{ ids: number[]; tokenized: number[]; tokensPerSecond: number }> {
    const model = await llama.loadModel({ modelPath: path });
    const ctx = await model.createContext({ contextSize: 512, threads: 1 });
    const ids: number[] = [];
    const t0 = performance.now();
    for await (const t of ctx.getSequence().evaluate(promptIds, { temperature: 0 })) {
      ids.push(t);
      if (ids.length >= N) break;
    }
    const tokensPerSecond = (N * 1000) / (performance.now() - t0);
    const tokenized = model.tokenize(PROMPT, false);
    await ctx.dispose();
    await model.dispose();
    return { ids, tokenized, tokensPerSecond };
  }

  function ours(params: Params): number[] {
    // Our generate stops at </s>; llama.cpp's evaluate runs on: compare up to our length.
    return generate({ config: m.config, tokenizer: m.tokenizer, params }, promptIds, greedy).ids;
  }

  function matching(a: number[], b: number[]): number {
    let k = 0;
    while (k < Math.min(a.length, b.length) && a[k] === b[k]) k++;
    return k;
  }

  const exported = (type: ExportType) => {
    const path = join(TMP, `stories260K-${type}.gguf`);
    writeGguf(path, toGguf(m.params, m.config, m.tokenizer, type, 'stories260K').file);
    return path;
  };

  test('f32: llama.cpp tokenizes the prompt like us and decodes the same greedy tokens', async (t) => {
    const path = exported('f32');
    const ref = ours(m.params);
    const r = await llamaCpp(path);
    assert.deepEqual(r.tokenized, promptIds.slice(1), 'llama.cpp tokenizes the prompt as we do (without BOS)');
    t.diagnostic(`f32: ${matching(r.ids, ref)} of ${ref.length} greedy tokens equal; llama.cpp ${Math.round(r.tokensPerSecond)} tokens/s`);
    assert.ok(ref.length >= 100, `our generation is ${ref.length} tokens`);
    assert.deepEqual(r.ids.slice(0, ref.length), ref);
  });

  test('gpt2 architecture (fused qkv, learned positions, byte-level BPE): same prompt tokens and greedy tokens as ours', async (t) => {
    // A GPT-2 with a BPE trained on Shakespeare; weights scaled up so logits are decisive (no near-ties at init).
    const text = readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 200_000);
    const tok = Tokenizer.train([text], { vocabSize: 400 });
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 400, n_ctx: 64, n_layer: 2, n_embd: 64, n_head: 4 });
    const init = initParams(c, 3);
    const p: Params = Object.fromEntries(Object.entries(init).map(([k, v]) => [k, v.rank === 2 ? tf.mul(v, 8) : tf.clone(v)]));
    disposeParams(init);
    const path = join(TMP, 'gpt2.gguf');
    writeGguf(path, toGguf(p, c, tok, 'f32', 'tiny-gpt2').file);
    const prompt = 'ROMEO: What say you, my lord?';
    const ids = tok.encode(prompt);
    const ref = generate({ config: c, tokenizer: tok, params: p }, ids, { ...greedy, max_tokens: 40 }).ids;
    disposeParams(p);
    const model = await llama.loadModel({ modelPath: path });
    const ctx = await model.createContext({ contextSize: 64, threads: 1 });
    const got: number[] = [];
    for await (const x of ctx.getSequence().evaluate(ids, { temperature: 0 })) {
      got.push(x);
      if (got.length >= ref.length) break;
    }
    const tokenized = model.tokenize(prompt, false);
    await ctx.dispose();
    await model.dispose();
    t.diagnostic(`gpt2 f32: ${matching(got, ref)} of ${ref.length} greedy tokens equal`);
    assert.deepEqual(tokenized, ids, 'llama.cpp applies our merges');
    assert.deepEqual(got, ref);
  });

  for (const type of ['q8_0', 'q4_0'] as const) {
    test(`${type}: llama.cpp's greedy tokens against ours on the same ${type} weights (read back by our reader)`, async (t) => {
      const path = exported(type);
      const back = fromGguf(readGguf(path), path); // the Q8_0 / Q4_0 values as float: the weights llama.cpp uses
      const ref = ours(back.params);
      disposeParams(back.params);
      const r = await llamaCpp(path);
      const k = matching(r.ids, ref);
      t.diagnostic(`${type}: ${k} of ${ref.length} greedy tokens equal (llama.cpp also rounds activations to 8 bits in its dot products); ${Math.round(r.tokensPerSecond)} tokens/s`);
      if (type === 'q8_0') assert.deepEqual(r.ids.slice(0, ref.length), ref);
      else assert.ok(k >= 10, `q4_0: only ${k} tokens agree`);
    });
  }
});
