/**
 * Serving benchmark in the manner of vLLM's benchmark_serving.py: requests with Poisson arrivals at several
 * rates against a real `llmctl serve` on 127.0.0.1 (a child process, so the load generator does not share
 * its event loop), streamed; reports output tokens/s, TTFT and TPOT p50/p99.
 *
 * The load generator: like vLLM's (aiohttp, its own SSE parsing), by default a lean node:http client that
 * splits the stream into events and JSON-parses each; `--client openai` streams through the official openai
 * client instead. On 2 cores the generator shares the CPU with the server, and the SDK's per-chunk cost
 * (more than the lean reader's) caps what a batched server can show: the server sits idle waiting for its reader.
 *
 *   node --import tsx bench/serve.ts [--checkpoint runs/pretrain] [--requests 64] [--rates 4,16,inf] [--reps 2]
 *                                    [--max-tokens 32] [--sweep 1,2,4,8,16,32] [--seed 0] [--client http|openai]
 *
 * 1. continuous batching (max_num_seqs 16) vs one request at a time (max_num_seqs 1) on the same load, as
 *    wall-clock output tokens/s and as tokens per second of the server's own CPU time (on a shared machine the
 *    wall-clock figure swings with other processes' load; the CPU-time one much less);
 * 2. a batch-size sweep (all requests at once, max_num_seqs from --sweep);
 * 3. single stream: one request at a time, server tokens/s and TTFT next to in-process `generate`;
 * 4. the same load through the engine alone (src/serve/offline.ts), 1 vs 16 sequences: the ceiling of 1.
 * Bounded: --requests per run, and every run stops after --run-timeout seconds.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import OpenAI from 'openai';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint } from '../src/checkpoint/model.js';
import { generate } from '../src/model/generate.js';
import { generateOffline } from '../src/serve/offline.js';
import { Rng } from '../src/util/rng.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { REPO, SHAKESPEARE_PATH } from '../test/paths.js';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const CHECKPOINT = args.get('checkpoint') ?? 'runs/pretrain';
const REQUESTS = Number(args.get('requests') ?? 64);
const RATES = (args.get('rates') ?? '4,16,inf').split(',').map((r) => (r === 'inf' ? Infinity : Number(r)));
const MAX_TOKENS = Number(args.get('max-tokens') ?? 32);
const SWEEP = (args.get('sweep') ?? '1,2,4,8,16,32').split(',').map(Number);
const RUN_TIMEOUT_S = Number(args.get('run-timeout') ?? 120);
const SEED = Number(args.get('seed') ?? 0);
const REPS = Number(args.get('reps') ?? 2);

interface Server { url: string; child: ChildProcess }

async function startServer(maxNumSeqs: number): Promise<Server> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve', '--checkpoint', CHECKPOINT, '--port', '0', '--backend', 'wasm', '--model-name', 'bench',
    '--max-num-seqs', String(maxNumSeqs), '--set', 'limits.max_waiting=100000', '--set', 'engine.prefix_caching=false'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  // The port (0 = any free one) comes from the `serving on` log line.
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 60_000);
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /"url":"(http:\/\/[^"]+)"/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1]!, child });
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
  });
}

async function stopServer(s: Server): Promise<void> {
  const done = new Promise((r) => s.child.on('close', r));
  s.child.kill('SIGTERM');
  await done;
}

/** Prompts: random slices of tiny Shakespeare of 8–24 tokens (so prompt + max_tokens fits the shipped model's 64). */
function prompts(n: number, seed: number): string[] {
  const text = readFileSync(SHAKESPEARE_PATH, 'utf8');
  const tokenizer = Tokenizer.load(CHECKPOINT);
  const rng = new Rng(seed + 1);
  return Array.from({ length: n }, () => {
    const want = 8 + Math.floor(rng.nextFloat() * 17), at = Math.floor(rng.nextFloat() * (text.length - 400));
    const ids = tokenizer.encode(text.slice(at, at + 400)).slice(0, want);
    return tokenizer.decode(ids);
  });
}

let failureShown = false;
interface Result { ok: boolean; ttft: number; e2e: number; tokens: number }

const CLIENT = args.get('client') ?? 'http';
// A connection per request: Node's Agent reuses keep-alive sockets the server is closing (its 5 s idle timeout).
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

/** One streamed completion through node:http: SSE events split on blank lines, each JSON-parsed (as vLLM's bench). */
function oneRequestHttp(url: string, prompt: string, seed: number): Promise<Result> {
  const t0 = performance.now();
  const body = JSON.stringify({ model: 'bench', prompt, max_tokens: MAX_TOKENS, temperature: 0.8, seed, stream: true, stream_options: { include_usage: true } });
  return new Promise((resolve) => {
    let ttft = 0, tokens = 0, buf = '', finished = false;
    const fail = (err: Error) => resolve(failed(err));
    const req = http.request(`${url}/v1/completions`, { method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }, timeout: RUN_TIMEOUT_S * 1000 }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return fail(new Error(`HTTP ${res.statusCode}`));
      }
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
          const event = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!event.startsWith('data: ')) continue;
          if (event === 'data: [DONE]') {
            finished = true;
            continue;
          }
          const chunk = JSON.parse(event.slice(6)) as { choices: { text?: string }[]; usage?: { completion_tokens: number } };
          if (!ttft && chunk.choices[0]?.text) ttft = performance.now() - t0;
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
        }
      });
      res.on('end', () => (finished ? resolve({ ok: true, ttft: ttft / 1000, e2e: (performance.now() - t0) / 1000, tokens }) : fail(new Error('stream ended before [DONE]'))));
      res.on('error', fail);
    });
    req.on('error', fail);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

const clients = new Map<string, OpenAI>();

/** One streamed completion against the server at `url`, through the chosen client. */
async function oneRequest(url: string, prompt: string, seed: number): Promise<Result> {
  if (CLIENT === 'http') return oneRequestHttp(url, prompt, seed);
  let client = clients.get(url);
  if (!client) clients.set(url, (client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0, timeout: RUN_TIMEOUT_S * 1000 })));
  const t0 = performance.now();
  let ttft = 0, tokens = 0;
  try {
    const stream = await client.completions.create({ model: 'bench', prompt, max_tokens: MAX_TOKENS, temperature: 0.8, seed, stream: true, stream_options: { include_usage: true } });
    for await (const chunk of stream) {
      if (!ttft && chunk.choices[0]?.text) ttft = performance.now() - t0;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
    return { ok: true, ttft: ttft / 1000, e2e: (performance.now() - t0) / 1000, tokens };
  } catch (err) {
    return failed(err as Error);
  }
}

/** A failed request: the first failure is printed, every one is counted. */
function failed(err: Error): Result {
  if (!failureShown) console.error(`request failed: ${err.message}`);
  failureShown = true;
  return { ok: false, ttft: 0, e2e: 0, tokens: 0 };
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

interface RunStats { rate: number; seqs: number; done: number; failed: number; seconds: number; outTokS: number; reqS: number; cpuS: number; tokPerCpuS: number; ttft50: number; ttft99: number; tpot50: number; tpot99: number }

/** The server's CPU seconds so far (process_cpu_seconds_total on /metrics). */
async function serverCpu(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^process_cpu_seconds_total (\S+)$/m.exec(text)?.[1]);
}

/** Send `ps` with Poisson arrivals (exponential gaps, mean 1/rate) and wait for all, bounded in time. */
async function run(url: string, seqs: number, rate: number, ps: string[]): Promise<RunStats> {
  const rng = new Rng(SEED + 7);
  const cpu0 = await serverCpu(url);
  const t0 = performance.now();
  const pending: Promise<Result>[] = [];
  for (let i = 0; i < ps.length; i++) {
    pending.push(oneRequest(url, ps[i]!, i));
    if (rate !== Infinity) await new Promise((r) => setTimeout(r, (-Math.log(1 - rng.nextFloat()) / rate) * 1000));
    if (performance.now() - t0 > RUN_TIMEOUT_S * 1000) break;
  }
  const results = await Promise.all(pending);
  const seconds = (performance.now() - t0) / 1000;
  const cpuS = (await serverCpu(url)) - cpu0;
  const ok = results.filter((r) => r.ok);
  const tokens = ok.reduce((n, r) => n + r.tokens, 0);
  const tpots = ok.filter((r) => r.tokens > 1).map((r) => (r.e2e - r.ttft) / (r.tokens - 1));
  return {
    rate, seqs, done: ok.length, failed: results.length - ok.length, seconds, outTokS: tokens / seconds, reqS: ok.length / seconds, cpuS, tokPerCpuS: tokens / cpuS,
    ttft50: pct(ok.map((r) => r.ttft), 50), ttft99: pct(ok.map((r) => r.ttft), 99), tpot50: pct(tpots, 50), tpot99: pct(tpots, 99),
  };
}

const ms = (s: number) => (s * 1000).toFixed(0);
function row(s: RunStats): string {
  return `| ${s.rate === Infinity ? 'all at once' : `${s.rate}/s`} | ${s.seqs} | ${s.done}${s.failed ? ` (${s.failed} failed)` : ''} | ${s.seconds.toFixed(1)} | ${s.outTokS.toFixed(0)} | ${s.cpuS.toFixed(1)} | ${s.tokPerCpuS.toFixed(0)} | ${ms(s.ttft50)} / ${ms(s.ttft99)} | ${ms(s.tpot50)} / ${ms(s.tpot99)} |`;
}
const HEADER = '| arrivals | max_num_seqs | requests | seconds | output tok/s | server CPU s | tokens per server CPU s | TTFT p50 / p99 ms | TPOT p50 / p99 ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |';

async function withServer<T>(seqs: number, fn: (url: string) => Promise<T>): Promise<T> {
  const s = await startServer(seqs);
  try {
    await run(s.url, seqs, Infinity, ps.slice(0, 32)); // untimed warm-up
    return await fn(s.url);
  } finally {
    await stopServer(s);
  }
}

const ps = prompts(REQUESTS, SEED);
console.log(`# serve bench: ${CHECKPOINT}, ${REQUESTS} requests per run, max_tokens ${MAX_TOKENS}, temperature 0.8, client ${CLIENT === 'http' ? 'node:http (lean SSE reader)' : 'openai'}\n`);

console.log('## Continuous batching vs one at a time (Poisson arrivals)\n');
console.log(`Both servers stay up; at each rate the two run back to back, in alternating order, ${REPS} times (the machine is shared, so load drifts).\n`);
console.log(HEADER);
const one = await startServer(1), batched = await startServer(16);
const ratios: string[] = [];
try {
  // Untimed warm-up of both servers (V8 compiles the hot paths during the first few hundred steps).
  for (const [seqs, s] of [[1, one], [16, batched]] as const) await run(s.url, seqs, Infinity, ps.slice(0, 32));
  for (const rate of RATES) {
    const rs: number[] = [], rsCpu: number[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      const pair: RunStats[] = [];
      for (const [seqs, s] of rep % 2 ? [[16, batched], [1, one]] as const : [[1, one], [16, batched]] as const) {
        const st = await run(s.url, seqs, rate, ps);
        console.log(row(st));
        pair[seqs] = st;
      }
      rs.push(pair[16]!.outTokS / pair[1]!.outTokS);
      rsCpu.push(pair[16]!.tokPerCpuS / pair[1]!.tokPerCpuS);
    }
    const fmt = (xs: number[]) => xs.map((r) => r.toFixed(2) + 'x').join(', ');
    ratios.push(`${rate === Infinity ? 'all at once' : `${rate}/s`}: wall ${fmt(rs)}; per server CPU s ${fmt(rsCpu)}`);
  }
} finally {
  await stopServer(one);
  await stopServer(batched);
}
console.log(`\ncontinuous batching (16) / one at a time (1), output tokens/s per repetition:\n${ratios.map((r) => `- ${r}`).join('\n')}\n`);

console.log('## Batch-size sweep (all requests at once)\n');
console.log(HEADER);
for (const seqs of SWEEP) console.log(row(await withServer(seqs, (url) => run(url, seqs, Infinity, ps))));

console.log('\n## Single stream: server vs in-process generate (same prompts, one at a time)\n');
const single = ps.slice(0, 8);
const server = await withServer(16, async (url) => {
  await oneRequest(url, single[0]!, 0); // warm-up
  const rs: Result[] = [];
  for (let i = 0; i < single.length; i++) rs.push(await oneRequest(url, single[i]!, i));
  return rs;
});
await initBackend('wasm');
const model = loadCheckpoint(CHECKPOINT);
const gen = single.map((p, i) => generate(model, model.tokenizer.encode(p), { max_tokens: MAX_TOKENS, temperature: 0.8, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: i }));
const serverTps = server.map((r) => (r.tokens > 1 ? (r.tokens - 1) / (r.e2e - r.ttft) : 0));
console.log('| path | decode tokens/s p50 | TTFT p50 ms |\n| --- | --- | --- |');
console.log(`| llmctl serve (HTTP + SSE, ${CLIENT === 'http' ? 'node:http reader' : 'openai client'}) | ${pct(serverTps, 50).toFixed(0)} | ${ms(pct(server.map((r) => r.ttft), 50))} |`);
console.log(`| llmctl generate (in process) | ${pct(gen.map((g) => g.tokensPerSecond), 50).toFixed(0)} | ${pct(gen.map((g) => g.ttftMs), 50).toFixed(0)} |`);

// The same load through the engine alone (offline.ts: no HTTP, no event loop between steps): the ceiling of
// the served ratio, since what the server adds per token is the same at any batch size.
console.log('\n## The engine alone (same prompts, all at once, in process, no HTTP)\n');
console.log('| max_num_seqs | requests | seconds | output tok/s |\n| --- | --- | --- | --- |');
const requests = ps.map((p, i) => ({ promptIds: model.tokenizer.encode(p), max_tokens: MAX_TOKENS, temperature: 0.8, top_p: 1, top_k: 0, repetition_penalty: 1, stop: [], seed: i }));
generateOffline(model, requests.slice(0, 32), { maxNumSeqs: 16, prefixCaching: false }); // warm-up
const alone: Record<number, number[]> = { 1: [], 16: [] };
for (let rep = 0; rep < REPS; rep++) {
  for (const seqs of rep % 2 ? [16, 1] : [1, 16]) {
    const t0 = performance.now();
    const out = generateOffline(model, requests, { maxNumSeqs: seqs, prefixCaching: false });
    const seconds = (performance.now() - t0) / 1000, tokens = out.reduce((n, r) => n + r.tokens, 0);
    alone[seqs]!.push(tokens / seconds);
    console.log(`| ${seqs} | ${requests.length} | ${seconds.toFixed(1)} | ${(tokens / seconds).toFixed(0)} |`);
  }
}
console.log(`\nengine alone, 16 / 1: ${alone[16]!.map((t, i) => (t / alone[1]![i]!).toFixed(2) + 'x').join(', ')}`);
disposeParams(model.params);
