/**
 * `llmctl serve` through the official `openai` client (v6) against real servers on 127.0.0.1 (ephemeral
 * ports), started and stopped here: completions, chat, streaming, n > 1, stop, logprobs, LoRA adapters as
 * models, errors (400, 401, 404, 429), Prometheus metrics, 200 concurrent streaming clients with faults,
 * and SIGTERM draining through the CLI. Every load loop is bounded in count and time.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import OpenAI from 'openai';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { initBackend } from '../src/backend/index.js';
import { type LoadedCheckpoint, disposeParams, saveCheckpoint } from '../src/checkpoint/model.js';
import { type ServeConfig, ServeConfigSchema } from '../src/config/serve.js';
import { generate } from '../src/model/generate.js';
import { resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { initLora, saveAdapter } from '../src/model/lora.js';
import { Rng } from '../src/util/rng.js';
import { type RunningServer, startServer } from '../src/serve/index.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { REPO } from './paths.js';

await initBackend('wasm');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-serve-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

// A tiny byte-level model with ChatML tokens: random weights, so outputs are arbitrary but deterministic.
const CORPUS = ['To be, or not to be, that is the question.', 'All the world is a stage, and all the men and women merely players.'];
const tokenizer = Tokenizer.train(CORPUS, { vocabSize: 300 });
const config = resolveModelConfig({ arch: 'gpt2', vocab_size: tokenizer.vocabSize, n_ctx: 64, n_layer: 2, n_embd: 32, n_head: 4 });
const params = initParams(config, 11);
const model: LoadedCheckpoint = { dir: join(TMP, 'tiny'), config, params, tokenizer, manifest: undefined };
after(() => disposeParams(params));
// On disk too: the adapter names it as its base, and the CLI test serves it.
await saveCheckpoint(model.dir, { config, params, tokenizer, stage: 'test', stageConfig: {} });

// A LoRA adapter with a non-zero B, so it changes the model's outputs.
const ADAPTER_DIR = join(TMP, 'adapter');
{
  const lora = initLora(config, { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj', 'up_proj'] }, 5);
  const rng = new Rng(9);
  for (const [name, t] of Object.entries(lora)) {
    if (!name.endsWith('lora_B')) continue;
    const data = Float32Array.from({ length: t.size }, () => rng.nextNormal() * 0.5);
    lora[name] = tf.tensor(data, t.shape);
    t.dispose();
  }
  mkdirSync(ADAPTER_DIR);
  saveAdapter(ADAPTER_DIR, lora, { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj', 'up_proj'] }, model.dir, model.config);
  disposeParams(lora);
}

function serveConfig(over: Record<string, unknown> = {}): ServeConfig {
  return ServeConfigSchema.parse({ checkpoint: model.dir, model_name: 'tiny', port: 0, ...over });
}

async function withServer<T>(over: Record<string, unknown>, fn: (s: RunningServer, client: OpenAI) => Promise<T>): Promise<T> {
  const s = await startServer(serveConfig(over), model);
  const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: (over.api_key as string) ?? 'unused', maxRetries: 0, timeout: 30_000 });
  try {
    return await fn(s, client);
  } finally {
    await s.close(5_000);
  }
}

const greedyText = (prompt: string, max: number, adapter?: { params: Record<string, tf.Tensor>; scale: number }) =>
  generate({ params: adapter?.params ?? params, config, tokenizer }, tokenizer.encode(prompt).length ? tokenizer.encode(prompt) : [tokenizer.eosId], {
    temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, max_tokens: max, stop: [], forward: adapter ? { loraScale: adapter.scale } : undefined,
  });

describe('serve: OpenAI API through the openai client', () => {
  let server: RunningServer;
  let client: OpenAI;
  before(async () => {
    server = await startServer(serveConfig({ lora: { 'tiny-lora': ADAPTER_DIR }, engine: { block_size: 8 } }), model);
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
  });
  after(() => server.close(5_000));

  test('GET /v1/models lists the base and the adapter; /health answers', async () => {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ['tiny', 'tiny-lora']);
    assert.equal(models.data[0]!.object, 'model');
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200);
  });

  test('completion: greedy text equals generate()\'s, with usage, ids, timestamps and finish_reason length', async () => {
    const ref = greedyText('To be', 12);
    const before = Math.floor(Date.now() / 1000);
    const r = await client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 12, temperature: 0 });
    assert.match(r.id, /^cmpl-[0-9a-f]{32}$/);
    assert.equal(r.object, 'text_completion');
    assert.ok(r.created >= before - 1 && r.created <= Date.now() / 1000 + 1);
    assert.equal(r.model, 'tiny');
    assert.equal(r.choices[0]!.text, ref.text);
    assert.equal(r.choices[0]!.finish_reason, 'length');
    assert.deepEqual(r.usage, { prompt_tokens: tokenizer.encode('To be').length, completion_tokens: 12, total_tokens: tokenizer.encode('To be').length + 12 });
  });

  test('streaming completion: the chunks concatenate to the non-streamed text and end with [DONE]', async () => {
    const whole = await client.completions.create({ model: 'tiny', prompt: 'All the world', max_tokens: 15, temperature: 0 });
    const stream = await client.completions.create({ model: 'tiny', prompt: 'All the world', max_tokens: 15, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '', finish: string | null = null, usage;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        finish = c.finish_reason ?? finish;
      }
    }
    assert.equal(text, whole.choices[0]!.text);
    assert.equal(finish, 'length');
    assert.equal(usage?.completion_tokens, 15);
    // Raw SSE: the last event is [DONE].
    const raw = await (await fetch(`${server.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'tiny', prompt: 'x', max_tokens: 2, stream: true }) })).text();
    assert.ok(raw.trimEnd().endsWith('data: [DONE]'), raw);
  });

  test('chat: ChatML prompt from the tokenizer, streamed deltas equal the whole message', async () => {
    const messages = [{ role: 'system' as const, content: 'Be brief.' }, { role: 'user' as const, content: 'To be?' }];
    const whole = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0 });
    assert.match(whole.id, /^chatcmpl-/);
    assert.equal(whole.object, 'chat.completion');
    assert.equal(whole.choices[0]!.message.role, 'assistant');
    assert.equal(whole.usage!.prompt_tokens, tokenizer.renderChat(messages, { addGenerationPrompt: true }).ids.length);
    const stream = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0, stream: true });
    let content = '', role;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      role ??= chunk.choices[0]?.delta.role;
      content += chunk.choices[0]?.delta.content ?? '';
    }
    assert.equal(role, 'assistant');
    assert.equal(content, whole.choices[0]!.message.content);
  });

  test('n = 3 with a seed: three different choices, repeatable, usage counts all of them', async () => {
    const ask = () => client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 8, temperature: 1.2, n: 3, seed: 42 });
    const a = await ask(), b = await ask();
    assert.deepEqual(a.choices.map((c) => c.index).sort(), [0, 1, 2]);
    const texts = a.choices.map((c) => c.text);
    assert.ok(new Set(texts).size > 1, `choices differ: ${JSON.stringify(texts)}`);
    assert.deepEqual(b.choices.map((c) => c.text), texts);
    assert.equal(a.usage!.completion_tokens, 24);
  });

  test('stop: the text ends before the stop string and finish_reason is stop', async () => {
    const full = (await client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 30, temperature: 0 })).choices[0]!.text;
    const stop = full.slice(6, 8);
    assert.ok(stop.length === 2, `a stop string from the greedy text: ${JSON.stringify(full)}`);
    const cut = await client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 30, temperature: 0, stop: [stop, 'zzzz'] });
    assert.equal(cut.choices[0]!.text, full.slice(0, full.indexOf(stop)));
    assert.equal(cut.choices[0]!.finish_reason, 'stop');
  });

  test('logprobs: one entry per token, the greedy token is the top alternative, log-probabilities ≤ 0', async () => {
    const r = await client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 6, temperature: 0, logprobs: 3 });
    const lp = r.choices[0]!.logprobs!;
    assert.equal(lp.tokens!.length, 6);
    assert.equal(lp.tokens!.join(''), r.choices[0]!.text);
    for (let i = 0; i < 6; i++) {
      const top = Object.entries(lp.top_logprobs![i]!);
      assert.equal(top.length, 3);
      assert.equal(lp.token_logprobs![i], Math.max(...top.map(([, v]) => v)));
      assert.ok(lp.token_logprobs![i]! <= 0);
    }
    const c = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = c.choices[0]!.logprobs!.content!;
    assert.equal(content.length, 4);
    assert.equal(content[0]!.top_logprobs.length, 2);
    assert.deepEqual(content[0]!.bytes, [...Buffer.from(content[0]!.token)]);
  });

  test('LoRA: the adapter is a model; base and adapter requests in one batch each match their own generate()', async () => {
    const { applyAdapter } = await import('../src/model/lora.js');
    const adapter = applyAdapter(params, ADAPTER_DIR);
    const refLora = greedyText('To be', 10, adapter).text;
    adapter.dispose();
    const refBase = greedyText('To be', 10).text;
    assert.notEqual(refLora, refBase, 'the adapter changes the output');
    const [a, b, c] = await Promise.all([
      client.completions.create({ model: 'tiny-lora', prompt: 'To be', max_tokens: 10, temperature: 0 }),
      client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 10, temperature: 0 }),
      client.completions.create({ model: 'tiny-lora', prompt: 'To be', max_tokens: 10, temperature: 0 }),
    ]);
    assert.equal(a.choices[0]!.text, refLora);
    assert.equal(b.choices[0]!.text, refBase);
    assert.equal(c.choices[0]!.text, refLora);
  });

  test('errors: unknown field and bad values → 400, unknown model → 404, prompt over the context → 400, all in OpenAI\'s error body', async () => {
    await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'x', bogus_field: 1 } as never), (e: InstanceType<typeof OpenAI.BadRequestError>) => {
      assert.equal(e.status, 400);
      assert.equal(e.param, 'bogus_field');
      assert.equal(e.type, 'invalid_request_error');
      return true;
    });
    await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'x', temperature: -1 }), (e: InstanceType<typeof OpenAI.BadRequestError>) => e.status === 400 && e.param === 'temperature');
    await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (e: InstanceType<typeof OpenAI.NotFoundError>) => e.status === 404 && e.code === 'model_not_found');
    await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'to be '.repeat(40), max_tokens: 4 }), (e: InstanceType<typeof OpenAI.BadRequestError>) => e.status === 400 && /maximum context length is 64/.test(e.message));
    const raw = await fetch(`${server.url}/v1/completions`, { method: 'POST', body: '{"model": "tiny", "prompt": ' });
    assert.equal(raw.status, 400);
    const body = (await raw.json()) as { error: Record<string, unknown> };
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  });

  test('/metrics: Prometheus text with vLLM-style names whose counters match the traffic', async () => {
    const before = await scrape(server.url);
    const r = await client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 7, temperature: 0 });
    const afterM = await scrape(server.url);
    assert.equal(afterM['llmctl:generation_tokens_total']! - before['llmctl:generation_tokens_total']!, 7);
    assert.equal(afterM['llmctl:prompt_tokens_total']! - before['llmctl:prompt_tokens_total']!, r.usage!.prompt_tokens);
    assert.equal(afterM['llmctl:time_to_first_token_seconds_count']! - before['llmctl:time_to_first_token_seconds_count']!, 1);
    for (const name of ['num_requests_running', 'num_requests_waiting', 'kv_cache_usage_perc', 'num_preemptions_total', 'time_per_output_token_seconds_count', 'e2e_request_latency_seconds_sum']) {
      assert.ok(`llmctl:${name}` in afterM, name);
    }
    assert.equal(afterM['llmctl:num_requests_running'], 0);

    // The same text through a Prometheus parser from npm (prom2json's output shape): families typed as vLLM's,
    // histograms with cumulative buckets ending at +Inf = _count, values equal to ours. (This parser drops the
    // _sum/_count lines of a labelled histogram, so the count is compared through the +Inf bucket.)
    const families = parsePrometheusTextFormat(await (await fetch(`${server.url}/metrics`)).text());
    const family = (name: string) => families.find((f) => f.name === `llmctl:${name}`) ?? assert.fail(`no family llmctl:${name}`);
    for (const name of ['generation_tokens_total', 'prompt_tokens_total', 'num_preemptions_total']) assert.equal(family(name).type, 'COUNTER', name);
    for (const name of ['num_requests_running', 'num_requests_waiting', 'kv_cache_usage_perc']) assert.equal(family(name).type, 'GAUGE', name);
    assert.equal(Number(family('generation_tokens_total').metrics[0]!.value), afterM['llmctl:generation_tokens_total']);
    for (const name of ['time_to_first_token_seconds', 'time_per_output_token_seconds', 'e2e_request_latency_seconds']) {
      const h = family(name);
      assert.equal(h.type, 'HISTOGRAM', name);
      const m = h.metrics[0]!;
      const counts = Object.entries(m.buckets!).map(([le, c]) => [le === '+Inf' ? Infinity : Number(le), Number(c)] as const).sort((a, b) => a[0] - b[0]);
      assert.ok(counts.every(([, c], i) => i === 0 || c >= counts[i - 1]![1]), `${name}: buckets are cumulative`);
      assert.equal(counts.at(-1)![0], Infinity, `${name}: last bucket +Inf`);
      assert.equal(counts.at(-1)![1], afterM[`llmctl:${name}_count`], `${name}: +Inf bucket = _count`);
    }
  });
});

/** Parse the exposition format strictly enough to catch malformed lines: name{labels} value, # HELP/TYPE. */
async function scrape(url: string): Promise<Record<string, number>> {
  const res = await fetch(`${url}/metrics`);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const out: Record<string, number> = {};
  const types = new Map<string, string>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') types.set(meta[2]!, meta[3]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$/.exec(line);
    assert.ok(m, `malformed metrics line: ${line}`);
    const family = m[1]!.replace(/_(bucket|sum|count)$/, '');
    assert.ok(types.has(m[1]!) || types.has(family), `no # TYPE for ${m[1]}`);
    if (!m[3]?.includes('le=') && !m[3]?.includes('finished_reason')) out[m[1]!] = Number(m[5]);
  }
  return out;
}

describe('serve: access control and back-pressure', () => {
  test('--api-key: a wrong key is 401, the right one works, /health needs none', async () => {
    await withServer({ api_key: 'sekret' }, async (s) => {
      const wrong = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'nope', maxRetries: 0 });
      await assert.rejects(wrong.models.list(), (e: InstanceType<typeof OpenAI.AuthenticationError>) => e.status === 401 && e.code === 'invalid_api_key');
      const right = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'sekret', maxRetries: 0 });
      assert.equal((await right.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 2 })).choices.length, 1);
      assert.equal((await fetch(`${s.url}/health`)).status, 200);
    });
  });

  test('a full waiting queue answers 429 with Retry-After, and every accepted request completes', async () => {
    await withServer({ engine: { max_num_seqs: 1 }, limits: { max_waiting: 2 } }, async (s, client) => {
      const results = await Promise.allSettled(Array.from({ length: 10 }, () => client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 20 })));
      const limited = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
      assert.ok(limited.length > 0, 'some requests were refused');
      for (const r of limited) {
        const e = r.reason as InstanceType<typeof OpenAI.RateLimitError>;
        assert.equal(e.status, 429);
        assert.equal(e.headers?.get('retry-after'), '1');
      }
      const ok = results.filter((r) => r.status === 'fulfilled');
      assert.ok(ok.length >= 3, `${ok.length} accepted`);
      for (const r of ok) {
        const c = (r as PromiseFulfilledResult<OpenAI.Completion>).value;
        assert.ok(c.choices[0]!.finish_reason === 'length' ? c.usage!.completion_tokens === 20 : c.choices[0]!.finish_reason === 'stop', JSON.stringify(c));
      }
      assert.equal(s.engine.numRequests, 0);
    });
  });
});

describe('serve: timeouts', () => {
  test('a request running past limits.request_timeout_s is cancelled with 408 and frees its blocks', async () => {
    // 1 ms: far less than 8 choices × 55 tokens take, however fast the kernels (each step yields to the event loop).
    await withServer({ limits: { request_timeout_s: 0.001 }, engine: { num_blocks: 64, block_size: 8 } }, async (s, client) => {
      await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 55, n: 8 }), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 408 && e.code === 'request_timeout');
      assert.equal(s.engine.numRequests, 0);
      assert.equal(s.engine.blocks.numFree, 64);
    });
  });
});

describe('serve: load and faults', () => {
  test('200 concurrent streaming clients (a third disconnect mid-stream) + malformed JSON + a 10 MB body + an over-long prompt', async () => {
    await withServer({ engine: { max_num_seqs: 16, num_blocks: 48, block_size: 8 }, limits: { max_waiting: 400 } }, async (s, client) => {
      const t0 = Date.now();
      const tensorsBefore = tf.memory().numTensors;
      const one = async (i: number) => {
        const controller = new AbortController();
        const leave = i % 3 === 0;
        const stream = await client.completions.create({ model: 'tiny', prompt: CORPUS[i % 2]!.slice(0, 10 + (i % 20)), max_tokens: 6 + (i % 5), temperature: 0.7, seed: i, stream: true }, { signal: controller.signal });
        let chunks = 0, finish: string | null = null, text = '';
        try {
          for await (const chunk of stream) {
            chunks++;
            text += chunk.choices[0]?.text ?? '';
            finish = chunk.choices[0]?.finish_reason ?? finish;
            if (leave && chunks === 1) controller.abort();
          }
        } catch (err) {
          if (!leave) throw err;
        }
        return { left: leave, finish, text };
      };
      const faults = async () => {
        const post = (body: string) => fetch(`${s.url}/v1/completions`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
        const bad = await post('{"model": "tiny", "prompt": "x",,}');
        const big = await post(JSON.stringify({ model: 'tiny', prompt: 'x'.repeat(10 * 2 ** 20) }));
        const long = await post(JSON.stringify({ model: 'tiny', prompt: 'To be or not '.repeat(30), max_tokens: 5 }));
        const health = await fetch(`${s.url}/health`);
        return [bad.status, big.status, long.status, health.status];
      };
      const [results, faultStatus] = await Promise.all([Promise.all(Array.from({ length: 200 }, (_, i) => one(i))), faults()]);
      assert.deepEqual(faultStatus, [400, 413, 400, 200]);
      const stayed = results.filter((r) => !r.left);
      assert.equal(results.length - stayed.length, 67, 'every third client left');
      assert.equal(stayed.length, 133);
      for (const r of stayed) assert.ok(r.finish === 'length' || r.finish === 'stop', `finished: ${JSON.stringify(r)}`);
      // Cancellations free their sequences at once; nothing is left running, every block is free.
      const deadline = Date.now() + 5_000;
      while (s.engine.numRequests > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(s.engine.numRequests, 0);
      assert.equal(s.engine.blocks.numFree, 48);
      assert.equal(tf.memory().numTensors, tensorsBefore);
      assert.equal((await fetch(`${s.url}/health`)).status, 200);
      // The server saw every request end: 133 finished, the leavers cancelled (or done before they left).
      const byReason = Object.fromEntries([...(await (await fetch(`${s.url}/metrics`)).text()).matchAll(/^llmctl:request_success_total\{[^}]*finished_reason="(\w+)"\} (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
      assert.equal((byReason.stop ?? 0) + (byReason.length ?? 0) + (byReason.abort ?? 0), 200, JSON.stringify(byReason));
      assert.ok((byReason.abort ?? 0) >= 40, `cancelled mid-stream: ${JSON.stringify(byReason)}`);
      assert.ok(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
    });
  });
});

describe('serve: the CLI', () => {
  test('llmctl serve: SIGTERM stops accepting, finishes the running request, exits 0', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve', '--checkpoint', model.dir, '--port', '0', '--backend', 'wasm'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 30_000);
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /"url":"(http:\/\/[^"]+)"/.exec(stderr);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
    });
    try {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
      const stream = await client.completions.create({ model: 'tiny', prompt: 'To be', max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } });
      let tokens = 0, signalled = false;
      for await (const chunk of stream) {
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        if (!signalled) {
          child.kill('SIGTERM');
          signalled = true;
          await new Promise((r) => setTimeout(r, 50));
          await assert.rejects(fetch(`${url}/v1/models`), 'no new connections while draining');
        }
      }
      assert.equal(tokens, 40, 'the running request finished');
      assert.equal(await exited, 0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
