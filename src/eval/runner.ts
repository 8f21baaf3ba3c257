/**
 * One runner for every task: builds each doc's requests (the harness's contexts and continuations), scores
 * all multiple-choice requests together (shared-context KV reuse, or batched by length), generates for the
 * generate_until tasks, scores texts with rolling windows, then computes per-doc metrics and aggregates them
 * with the harness's standard errors.
 */
import { createHash } from 'node:crypto';
import type { Tokenizer } from '../tokenizer/index.js';
import type { LanguageModel } from '../model/generate.js';
import type { ForwardOptions } from '../model/gpt.js';
import { Progress, log } from '../util/log.js';
import { generateOffline } from '../serve/offline.js';
import type { NgramIndex } from './contamination.js';
import { type ChoiceGroup, type LoglikResult, type LoglikStats, encodePair, encodeText, rollingLoglik, scoreGroupsShared, scoreGroupsUnshared } from './loglik.js';
import { exactMatch, gsm8kFlexible, gsm8kStrict, mc2, mean, meanStderr, multipleChoice, passAtK } from './metrics.js';
import { type RunResult, type SandboxOptions, DEFAULT_SANDBOX, humanevalProgram, networkNamespaceAvailable, pythonUnavailable, runPrograms } from './sandbox.js';
import { type GenDoc, type GenTask, type McDoc, type McTask, type RollingTask, type Task, buildContext } from './tasks.js';

export interface EvalOptions {
  /** Overrides every task's default few-shot count (tasks without a few-shot pool stay zero-shot). */
  numFewshot?: number;
  /** First N docs of each task. */
  limit?: number;
  batchSize: number;
  /** Run a multiple-choice question's context once and reuse its KV cache for every choice. */
  shareContext: boolean;
  /** Perplexity window stride in tokens (default n_ctx: disjoint windows). */
  stride?: number;
  /** Perplexity: only the last N bytes of each text. */
  tailBytes?: number;
  humaneval: { samples: number; k: number[]; temperature: number; topP: number; seed: number; maxTokens?: number };
  gsm8kMaxTokens?: number;
  sandbox: SandboxOptions;
  forward?: ForwardOptions;
  contamination?: NgramIndex;
  logSamples: boolean;
}

export const DEFAULT_EVAL_OPTIONS: EvalOptions = {
  batchSize: 8, shareContext: true, logSamples: false, sandbox: DEFAULT_SANDBOX,
  humaneval: { samples: 1, k: [1], temperature: 0.8, topP: 0.95, seed: 1234 },
};

/** What one task produced: lm-eval-shaped metric entries ("acc,none", "acc_stderr,none", …) and more. */
export interface TaskOutcome {
  name: string;
  version: string;
  kind: Task['kind'];
  numFewshot: number;
  nOriginal: number;
  nEffective: number;
  metrics: Record<string, number | string>;
  higherIsBetter: Record<string, boolean>;
  /** sha256 over every request's exact prompt text (and continuations), so two runs can be compared. */
  promptHash: string;
  samples: Record<string, unknown>[];
  skipped?: string;
  contamination?: { n: number; dirty: number; dirty_share: number; clean: Record<string, number> };
  /** MMLU: per-subject outcomes (reported as mmlu_<subject>). */
  subtasks?: TaskOutcome[];
  extra?: Record<string, unknown>;
}

export interface EvalRun {
  tasks: TaskOutcome[];
  throughput: { loglik_requests: number; loglik_seconds: number; loglik_requests_per_s: number; forwards: number; tokens_run: number; generated_tokens: number; generate_seconds: number; generated_tokens_per_s: number; rolling_tokens: number; rolling_seconds: number };
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function fewshotFor(task: McTask | GenTask, o: EvalOptions): number {
  if (o.numFewshot === undefined) return task.defaultFewshot;
  return task.defaultFewshot === 0 && task.fewshotPool(task.docs[0] as never).length === 0 ? 0 : o.numFewshot;
}

// ------------------------------------------------------------------------------ multiple choice

interface McPlan {
  task: McTask;
  docs: McDoc[];
  k: number;
  contexts: string[];
  groups: ChoiceGroup[];
}

function planMc(model: LanguageModel, task: McTask, o: EvalOptions): McPlan {
  const docs = task.docs.slice(0, o.limit ?? task.docs.length);
  const k = fewshotFor(task, o);
  const contexts = docs.map((d) => buildContext(task, d, k));
  const groups = docs.map((d, i) => {
    const pairs = d.choices.map((c) => encodePair(model, contexts[i]!, task.targetDelimiter + c));
    return { context: pairs[0]!.context, continuations: pairs.map((p) => p.continuation) };
  });
  return { task, docs, k, contexts, groups };
}

function mcOutcome(p: McPlan, results: LoglikResult[][], o: EvalOptions): TaskOutcome {
  const { task, docs } = p;
  const perDoc = docs.map((d, i) => {
    const lls = results[i]!.map((r) => r.ll);
    const m = multipleChoice(lls, d.choices, d.gold);
    const values: Record<string, number> = {};
    if (task.metrics.includes('acc')) values.acc = m.acc;
    if (task.metrics.includes('acc_norm')) values.acc_norm = m.acc_norm;
    if (task.metrics.includes('mc2')) values.acc = mc2(lls, d.labels!); // the harness reports MC2 as "acc"
    return { values, lls, pred: m.pred };
  });
  const outcome = aggregate(task.name, task.version, 'multiple_choice', p.k, task.docs.length, perDoc.map((x) => x.values), '', docs.map((d) => d.decontam), o);
  outcome.promptHash = sha256(JSON.stringify(docs.map((d, i) => [p.contexts[i], d.choices.map((c) => task.targetDelimiter + c)])));
  if (o.logSamples) {
    outcome.samples = docs.map((d, i) => ({
      doc_id: i, id: d.id, prompt: p.contexts[i], choices: d.choices, target: d.gold, arguments: d.choices.map((c) => [p.contexts[i], task.targetDelimiter + c]),
      resps: results[i]!.map((r) => [r.ll, r.isGreedy]), filtered_resps: perDoc[i]!.lls, prediction: perDoc[i]!.pred, gold: d.gold,
      ...(d.labels ? { labels: d.labels } : {}), ...perDoc[i]!.values, prompt_hash: sha256(p.contexts[i]!),
    }));
  }
  if (task.name === 'mmlu') {
    const subjects = [...new Set(docs.map((d) => d.group!))];
    outcome.subtasks = subjects.map((s) => {
      const idx = docs.map((d, i) => (d.group === s ? i : -1)).filter((i) => i >= 0);
      const sub = aggregate(`mmlu_${s}`, task.version, 'multiple_choice', p.k, task.docs.filter((d) => d.group === s).length, idx.map((i) => perDoc[i]!.values), '', idx.map((i) => docs[i]!.decontam), o);
      sub.promptHash = sha256(JSON.stringify(idx.map((i) => [p.contexts[i], docs[i]!.choices])));
      return sub;
    });
  }
  return outcome;
}

/** Mean and stderr of each per-doc metric, named "<metric>,<filter>" as lm-eval does, plus contamination. */
function aggregate(name: string, version: string, kind: Task['kind'], k: number, nOriginal: number, perDoc: Record<string, number>[], filter: string, decontam: string[], o: EvalOptions): TaskOutcome {
  const metrics: Record<string, number | string> = {}, higherIsBetter: Record<string, boolean> = {};
  const names = Object.keys(perDoc[0] ?? {});
  const f = filter || 'none';
  for (const m of names) {
    const xs = perDoc.map((d) => d[m]!);
    metrics[`${m},${f}`] = mean(xs);
    metrics[`${m}_stderr,${f}`] = xs.length > 1 ? meanStderr(xs) : 'N/A';
    higherIsBetter[m] = true;
  }
  const out: TaskOutcome = { name, version, kind, numFewshot: k, nOriginal, nEffective: perDoc.length, metrics, higherIsBetter, promptHash: '', samples: [] };
  if (o.contamination) {
    const dirty = decontam.map((t) => o.contamination!.isDirty(t));
    const clean: Record<string, number> = {};
    const cleanDocs = perDoc.filter((_, i) => !dirty[i]);
    for (const m of names) if (cleanDocs.length) clean[`${m},${f}`] = mean(cleanDocs.map((d) => d[m]!));
    const nDirty = dirty.filter(Boolean).length;
    out.contamination = { n: perDoc.length, dirty: nDirty, dirty_share: perDoc.length ? nDirty / perDoc.length : 0, clean };
  }
  return out;
}

// ---------------------------------------------------------------------------------- generation

/** Prompt tokens, cut from the left to leave room for the generation (the harness keeps the last max_length − max_gen_toks). */
function generationPrompt(model: LanguageModel, text: string, maxTokens: number): number[] {
  const tok: Tokenizer = model.tokenizer;
  const ids = [...(tok.bosId !== undefined ? [tok.bosId] : []), ...encodeText(model, text)];
  const room = Math.min(maxTokens, Math.floor(model.config.n_ctx / 2));
  const keep = model.config.n_ctx - room;
  return ids.length > keep ? ids.slice(ids.length - keep) : ids.length ? ids : [tok.eosId];
}

async function genOutcome(model: LanguageModel, task: GenTask, o: EvalOptions, progress: () => void, stats: { tokens: number; seconds: number }): Promise<TaskOutcome> {
  const docs = task.docs.slice(0, o.limit ?? task.docs.length);
  const k = fewshotFor(task, o);
  const contexts = docs.map((d) => buildContext(task, d, k));
  const promptHash = sha256(JSON.stringify(contexts));
  const isCode = task.scorer === 'humaneval';
  const missingPython = isCode ? pythonUnavailable(o.sandbox.python) : null;
  if (missingPython) {
    const msg = `HumanEval skipped: ${missingPython}; it runs each completion's unit tests in python3 (install python3 or set sandbox.python)`;
    log().warn({ task: task.name }, msg);
    return { name: task.name, version: task.version, kind: 'generate_until', numFewshot: k, nOriginal: task.docs.length, nEffective: 0, metrics: {}, higherIsBetter: {}, promptHash, samples: [], skipped: msg };
  }
  const n = isCode ? o.humaneval.samples : 1;
  const maxTokens = isCode ? (o.humaneval.maxTokens ?? task.maxGenToks) : (o.gsm8kMaxTokens ?? task.maxGenToks);
  const sampling = isCode && n > 1
    ? { temperature: o.humaneval.temperature, top_p: o.humaneval.topP, top_k: 0, repetition_penalty: 1 }
    : { temperature: 0, top_p: 1, top_k: 0, repetition_penalty: 1 };
  // Every (document, sample) is one request through the serving engine's continuous batching (offline.ts):
  // up to 16 decode together and the few-shot prefix blocks are shared; each keeps its own seed and stops.
  const requests = docs.flatMap((_, i) => {
    const promptIds = generationPrompt(model, contexts[i]!, maxTokens);
    return Array.from({ length: n }, (_, s) => ({ promptIds, ...sampling, seed: o.humaneval.seed + i * 1000 + s, max_tokens: maxTokens, stop: task.until }));
  });
  const left = docs.map(() => n);
  const t0 = performance.now();
  const results = generateOffline(model, requests, {
    loraScale: o.forward?.loraScale,
    onDone: (r) => {
      if (--left[Math.floor(r / n)]! === 0) progress();
    },
  });
  stats.seconds += (performance.now() - t0) / 1000;
  stats.tokens += results.reduce((t, r) => t + r.tokens, 0);
  const completions = docs.map((_, i) => results.slice(i * n, (i + 1) * n).map((r) => r.text));
  if (task.scorer === 'gsm8k') {
    const perDoc = docs.map((d, i) => {
      const resp = completions[i]![0]!;
      return { strict: exactMatch(gsm8kStrict(resp), d.target), flexible: exactMatch(gsm8kFlexible(resp), d.target) };
    });
    const strict = aggregate(task.name, task.version, 'generate_until', k, task.docs.length, perDoc.map((p) => ({ exact_match: p.strict })), 'strict-match', docs.map((d) => d.decontam), o);
    const flex = aggregate(task.name, task.version, 'generate_until', k, task.docs.length, perDoc.map((p) => ({ exact_match: p.flexible })), 'flexible-extract', docs.map((d) => d.decontam), o);
    strict.metrics = { ...strict.metrics, ...flex.metrics };
    if (strict.contamination && flex.contamination) strict.contamination.clean = { ...strict.contamination.clean, ...flex.contamination.clean };
    strict.promptHash = promptHash;
    if (o.logSamples) {
      strict.samples = docs.map((d, i) => ({
        doc_id: i, id: d.id, prompt: contexts[i], target: d.target, resps: completions[i], filtered_resps: { 'strict-match': gsm8kStrict(completions[i]![0]!), 'flexible-extract': gsm8kFlexible(completions[i]![0]!) },
        exact_match: { 'strict-match': perDoc[i]!.strict, 'flexible-extract': perDoc[i]!.flexible }, prompt_hash: sha256(contexts[i]!),
      }));
    }
    return strict;
  }
  // HumanEval: run every completion against the problem's tests, pass@k per problem.
  const { perDoc, runs } = await scoreHumaneval(docs, completions, o.humaneval.k, o.sandbox);
  const out = aggregate(task.name, task.version, 'generate_until', k, task.docs.length, perDoc, 'create_test', docs.map((d) => d.decontam), o);
  out.promptHash = promptHash;
  out.extra = { samples_per_problem: n, sandbox: { timeout_ms: o.sandbox.timeoutMs, memory_bytes: o.sandbox.memoryBytes, output_bytes: o.sandbox.outputBytes, network_namespace: networkNamespaceAvailable() } };
  if (o.logSamples) {
    out.samples = docs.map((d, i) => ({
      doc_id: i, id: d.id, prompt: contexts[i], resps: completions[i], results: runs.slice(i * n, (i + 1) * n).map((r) => r.result), ...perDoc[i], prompt_hash: sha256(contexts[i]!),
    }));
  }
  return out;
}

/** Each problem's completions run against its unit tests; pass@k (k ≤ samples per problem) per problem. */
export async function scoreHumaneval(docs: GenDoc[], completions: string[][], k: number[], sandbox: SandboxOptions): Promise<{ perDoc: Record<string, number>[]; runs: RunResult[] }> {
  const n = completions[0]?.length ?? 0;
  const programs = docs.flatMap((d, i) => completions[i]!.map((c) => humanevalProgram(d.text, c, d.test!, d.entryPoint!)));
  const runs = await runPrograms(programs, sandbox);
  const ks = k.filter((kk) => kk <= n);
  const perDoc = docs.map((_, i) => {
    const c = runs.slice(i * n, (i + 1) * n).filter((r) => r.passed).length;
    return Object.fromEntries(ks.map((kk) => [`pass@${kk}`, passAtK(n, c, kk)]));
  });
  return { perDoc, runs };
}

// ---------------------------------------------------------------------------------- perplexity

function rollingOutcome(model: LanguageModel, task: RollingTask, o: EvalOptions, stats: LoglikStats, timing: { tokens: number; seconds: number }): TaskOutcome {
  const docs = task.docs.slice(0, o.limit ?? task.docs.length);
  const stride = o.stride ?? model.config.n_ctx;
  let ll = 0, words = 0, bytes = 0, tokens = 0;
  const samples: Record<string, unknown>[] = [];
  const t0 = performance.now();
  for (const [i, d] of docs.entries()) {
    const text = o.tailBytes ? tailBytes(d.text, o.tailBytes) : d.text;
    const r = rollingLoglik(model, text, stride, o.batchSize, o.forward, stats);
    const w = text.split(/\s+/).length, b = Buffer.byteLength(text);
    ll += r.ll; words += w; bytes += b; tokens += r.tokens;
    if (o.logSamples) samples.push({ doc_id: i, id: d.id, loglikelihood: r.ll, tokens: r.tokens, words: w, bytes: b });
  }
  timing.tokens += tokens;
  timing.seconds += (performance.now() - t0) / 1000;
  const metrics = {
    'word_perplexity,none': Math.exp(-ll / words), 'word_perplexity_stderr,none': 'N/A',
    'byte_perplexity,none': Math.exp(-ll / bytes), 'byte_perplexity_stderr,none': 'N/A',
    'bits_per_byte,none': -ll / bytes / Math.LN2, 'bits_per_byte_stderr,none': 'N/A',
    'token_perplexity,none': Math.exp(-ll / tokens), 'token_perplexity_stderr,none': 'N/A',
  };
  return {
    name: task.name, version: task.version, kind: task.kind, numFewshot: 0, nOriginal: task.docs.length, nEffective: docs.length, metrics,
    higherIsBetter: { word_perplexity: false, byte_perplexity: false, bits_per_byte: false, token_perplexity: false },
    promptHash: sha256(JSON.stringify([docs.map((d) => d.text), o.tailBytes ?? null])), samples, extra: { stride, tail_bytes: o.tailBytes ?? null, tokens, words, bytes },
  };
}

/** The last `n` bytes of a text, starting at a character boundary. */
export function tailBytes(text: string, n: number): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= n) return text;
  let start = buf.length - n;
  while (start < buf.length && (buf[start]! & 0xc0) === 0x80) start++; // skip UTF-8 continuation bytes
  return buf.subarray(start).toString('utf8');
}

// ------------------------------------------------------------------------------------ the runner

export async function evaluate(model: LanguageModel, tasks: Task[], o: EvalOptions): Promise<EvalRun> {
  const mcPlans = tasks.filter((t): t is McTask => t.kind === 'multiple_choice').map((t) => planMc(model, t, o));
  const genTasks = tasks.filter((t): t is GenTask => t.kind === 'generate_until');
  const total = mcPlans.reduce((s, p) => s + p.groups.length, 0) + genTasks.reduce((s, t) => s + Math.min(o.limit ?? Infinity, t.docs.length), 0);
  const progress = new Progress('eval', total);
  let done = 0;
  const tick = (fields: Record<string, number | string> = {}) => {
    done++;
    if (done % 10 === 0 || done === total) progress.update(done, fields);
  };

  // Every multiple-choice request of every task at once.
  const stats: LoglikStats = { forwards: 0, tokensRun: 0 };
  const groups = mcPlans.flatMap((p) => p.groups);
  const t0 = performance.now();
  let scored: LoglikResult[][];
  if (o.shareContext) {
    scored = scoreGroupsShared(model, groups, o.batchSize, o.forward, stats, () => tick());
  } else {
    scored = scoreGroupsUnshared(model, groups, o.batchSize, o.forward, stats);
    for (let i = 0; i < groups.length; i++) tick();
  }
  const loglikSeconds = (performance.now() - t0) / 1000;
  const loglikRequests = groups.reduce((s, g) => s + g.continuations.length, 0);

  const outcomes = new Map<Task, TaskOutcome>();
  let at = 0;
  for (const p of mcPlans) {
    outcomes.set(p.task, mcOutcome(p, scored.slice(at, at + p.groups.length), o));
    at += p.groups.length;
  }
  const gen = { tokens: 0, seconds: 0 };
  for (const t of genTasks) outcomes.set(t, await genOutcome(model, t, o, () => tick(), gen));
  const rolling = { tokens: 0, seconds: 0 };
  for (const t of tasks) if (t.kind === 'loglikelihood_rolling') outcomes.set(t, rollingOutcome(model, t, o, stats, rolling));
  progress.done(`eval: ${done} items`);

  return {
    tasks: tasks.map((t) => outcomes.get(t)!),
    throughput: {
      loglik_requests: loglikRequests, loglik_seconds: loglikSeconds, loglik_requests_per_s: loglikSeconds > 0 ? loglikRequests / loglikSeconds : 0, forwards: stats.forwards, tokens_run: stats.tokensRun,
      generated_tokens: gen.tokens, generate_seconds: gen.seconds, generated_tokens_per_s: gen.seconds > 0 ? gen.tokens / gen.seconds : 0,
      rolling_tokens: rolling.tokens, rolling_seconds: rolling.seconds,
    },
  };
}

