/**
 * Log-likelihood requests against the shared transformer (src/model/gpt.ts), as lm-evaluation-harness's
 * HFLM does them: context and continuation are tokenized as the harness's _encode_pair (the continuation's
 * tokens are those the whole string has beyond the context's), the window is the last n_ctx + 1 tokens, and
 * the result is (Σ log p(continuation), whether greedy decoding would have produced it).
 *
 * Two ways to run a group of requests that share one context (the choices of a multiple-choice question):
 *  - shared:   the context is run once (several questions' contexts batched together); its KV cache is copied
 *              to one row per choice and only the choices' tokens run on top of it (a one-token choice costs
 *              nothing beyond the context);
 *  - unshared: every (context, choice) sequence is run in full, batched with others of similar length.
 * Both feed the model the same tokens and give the same numbers (a test checks it); the context of a group
 * is cut from the left so that it fits beside the group's longest continuation.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LanguageModel } from '../model/generate.js';
import { type ForwardOptions, disposeCache, emptyCache, forward, repeatCacheRow } from '../model/gpt.js';

export interface LoglikResult {
  ll: number;
  isGreedy: boolean;
}

/** Token ids of text the way eval sees it: BOS first when the tokenizer has one, special-token text left literal. */
export function encodeText(model: LanguageModel, text: string): number[] {
  return model.tokenizer.encode(text, { addBos: false, allowSpecial: false });
}

function prefixIds(model: LanguageModel): number[] {
  return [model.tokenizer.bosId ?? model.tokenizer.eosId];
}

/**
 * The harness's _encode_pair: trailing spaces of the context move to the continuation, then the continuation
 * is what encode(context + continuation) has beyond encode(context). An empty context is the BOS (or EOS) token.
 */
export function encodePair(model: LanguageModel, context: string, continuation: string): { context: number[]; continuation: number[] } {
  const nSpaces = context.length - context.replace(/\s+$/, '').length;
  if (nSpaces > 0) {
    continuation = context.slice(context.length - nSpaces) + continuation;
    context = context.slice(0, context.length - nSpaces);
  }
  const prefix = model.tokenizer.bosId !== undefined ? prefixIds(model) : [];
  const whole = [...prefix, ...encodeText(model, context + continuation)];
  const ctx = context ? [...prefix, ...encodeText(model, context)] : prefixIds(model);
  return { context: ctx, continuation: context ? whole.slice(ctx.length) : whole.slice(prefix.length) };
}

export interface ChoiceGroup {
  context: number[];
  continuations: number[][];
}

export interface LoglikStats {
  forwards: number;
  tokensRun: number;
}

/** Cut the context from the left so that context + the longest continuation fits in n_ctx + 1 tokens (≥ 1 context token kept). */
export function fitContext(context: number[], continuations: number[][], nCtx: number): number[] {
  const longest = Math.max(0, ...continuations.map((c) => c.length));
  const keep = Math.max(1, nCtx + 1 - longest);
  return context.length > keep ? context.slice(context.length - keep) : context;
}

/** log-softmax of one logits row and the target's log-prob / greedy flag. */
function scoreRow(row: Float32Array, offset: number, V: number, target: number): LoglikResult {
  let max = -Infinity, arg = 0;
  for (let v = 0; v < V; v++) {
    const x = row[offset + v]!;
    if (x > max) { max = x; arg = v; }
  }
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(row[offset + v]! - max);
  return { ll: row[offset + target]! - max - Math.log(sum), isGreedy: arg === target };
}

/** Sum the scores of `targets` read from logits rows [b, t0 .. t0+len) of a [B, T, V] tensor. */
function scoreSpan(logits: tf.Tensor3D, b: number, t0: number, targets: number[]): LoglikResult {
  if (!targets.length) return { ll: 0, isGreedy: true };
  const V = logits.shape[2];
  const span = tf.slice(logits, [b, t0, 0], [1, targets.length, V]);
  const data = span.dataSync() as Float32Array;
  span.dispose();
  let ll = 0, greedy = true;
  targets.forEach((tok, j) => {
    const r = scoreRow(data, j * V, V, tok);
    ll += r.ll;
    greedy &&= r.isGreedy;
  });
  return { ll, isGreedy: greedy };
}

function run(model: LanguageModel, rows: number[][], o: ForwardOptions): tf.Tensor3D {
  const T = Math.max(...rows.map((r) => r.length));
  const pad = model.tokenizer.eosId;
  // Right padding: under causal attention the padded tail cannot change the real positions' logits.
  const flat = rows.flatMap((r) => [...r, ...Array(T - r.length).fill(pad)]);
  const input = tf.tensor2d(flat, [rows.length, T], 'int32');
  const { logits } = forward(model.params, model.config, input, o);
  input.dispose();
  return logits;
}

/**
 * Shared-context scoring: the contexts of up to `batchSize` questions run in one forward (right-padded, longest
 * first); each choice's first token is scored from its context's last position, and when choices have more
 * tokens, that context's cache (its own positions only, so the padding is never seen) is copied into one row
 * per choice and only the choices' tokens run on top of it.
 */
export function scoreGroupsShared(model: LanguageModel, groups: ChoiceGroup[], batchSize: number, fwd: ForwardOptions = {}, stats?: LoglikStats, onGroup?: () => void): LoglikResult[][] {
  const nCtx = model.config.n_ctx;
  const out: LoglikResult[][] = Array(groups.length);
  const shareable: number[] = [];
  groups.forEach((g, i) => {
    // A continuation as long as the window leaves no room for a context to share.
    if (Math.max(...g.continuations.map((c) => c.length)) >= nCtx) {
      out[i] = scoreGroupsUnshared(model, [g], 1, fwd, stats)[0]!;
      onGroup?.();
    } else shareable.push(i);
  });
  const ctxs = groups.map((g) => fitContext(g.context, g.continuations, nCtx));
  shareable.sort((a, b) => ctxs[b]!.length - ctxs[a]!.length || a - b);
  for (let s = 0; s < shareable.length; s += batchSize) {
    const idx = shareable.slice(s, s + batchSize);
    const cache = emptyCache(model.config);
    try {
      const logits = run(model, idx.map((i) => ctxs[i]!), { ...fwd, cache });
      if (stats) { stats.forwards++; stats.tokensRun += idx.length * ctxs[idx[0]!]!.length; }
      idx.forEach((gi, b) => {
        const conts = groups[gi]!.continuations, L = ctxs[gi]!.length;
        const firsts = conts.map((c) => (c.length ? scoreSpan(logits, b, L - 1, [c[0]!]) : { ll: 0, isGreedy: true }));
        const rest = conts.map((c) => c.slice(0, -1)); // inputs after the context: every continuation token but the last
        if (Math.max(...rest.map((r) => r.length)) === 0) {
          out[gi] = firsts;
        } else {
          const rows = rest.map((r) => (r.length ? r : [model.tokenizer.eosId])); // an empty row is padding, never read
          const own = repeatCacheRow(cache, b, L, rows.length);
          try {
            const more = run(model, rows, { ...fwd, cache: own });
            if (stats) { stats.forwards++; stats.tokensRun += rows.length * Math.max(...rows.map((r) => r.length)); }
            out[gi] = conts.map((c, i) => {
              const m = scoreSpan(more, i, 0, c.slice(1));
              return { ll: firsts[i]!.ll + m.ll, isGreedy: firsts[i]!.isGreedy && m.isGreedy };
            });
            more.dispose();
          } finally {
            disposeCache(own);
          }
        }
        onGroup?.();
      });
      logits.dispose();
    } finally {
      disposeCache(cache);
    }
  }
  return out;
}

/** One question's choices with its context shared (see scoreGroupsShared). */
export function scoreGroupShared(model: LanguageModel, g: ChoiceGroup, fwd: ForwardOptions = {}, stats?: LoglikStats): LoglikResult[] {
  return scoreGroupsShared(model, [g], 1, fwd, stats)[0]!;
}

/** A full sequence and how many of its last tokens are scored. */
interface Sequence {
  tokens: number[];
  scored: number;
}

/** Sequences batched `batchSize` at a time, longest first (the harness's order), each window ≤ n_ctx + 1 tokens. */
export function scoreSequences(model: LanguageModel, seqs: Sequence[], batchSize: number, fwd: ForwardOptions = {}, stats?: LoglikStats): LoglikResult[] {
  const order = seqs.map((_, i) => i).sort((a, b) => seqs[b]!.tokens.length - seqs[a]!.tokens.length || a - b);
  const out: LoglikResult[] = Array(seqs.length);
  for (let s = 0; s < order.length; s += batchSize) {
    const idx = order.slice(s, s + batchSize);
    const windows = idx.map((i) => seqs[i]!.tokens.slice(-(model.config.n_ctx + 1)));
    const inputs = windows.map((w) => w.slice(0, -1));
    const logits = run(model, inputs, fwd);
    if (stats) { stats.forwards++; stats.tokensRun += inputs.length * Math.max(...inputs.map((r) => r.length)); }
    idx.forEach((i, b) => {
      const w = windows[b]!, n = Math.min(seqs[i]!.scored, w.length - 1);
      out[i] = scoreSpan(logits, b, w.length - 1 - n, w.slice(w.length - n));
    });
    logits.dispose();
  }
  return out;
}

/** Unshared scoring of several groups: every (context, continuation) run in full, batched across groups. */
export function scoreGroupsUnshared(model: LanguageModel, groups: ChoiceGroup[], batchSize: number, fwd: ForwardOptions = {}, stats?: LoglikStats): LoglikResult[][] {
  const seqs: Sequence[] = [];
  for (const g of groups) {
    const ctx = fitContext(g.context, g.continuations, model.config.n_ctx);
    for (const c of g.continuations) seqs.push({ tokens: [...ctx, ...c], scored: c.length });
  }
  const flat = scoreSequences(model, seqs, batchSize, fwd, stats);
  let k = 0;
  return groups.map((g) => g.continuations.map(() => flat[k++]!));
}

export interface RollingResult {
  ll: number;
  tokens: number;
}

/**
 * Log-likelihood of a whole text with a sliding window (Hugging Face's perplexity recipe): the text follows
 * one BOS/EOS token; windows advance by `stride` tokens, each scoring only its new tokens with up to n_ctx
 * tokens of context. stride = n_ctx gives the harness's disjoint rolling windows.
 */
export function rollingLoglik(model: LanguageModel, text: string, stride: number, batchSize: number, fwd: ForwardOptions = {}, stats?: LoglikStats): RollingResult {
  const nCtx = model.config.n_ctx;
  if (stride < 1 || stride > nCtx) throw new Error(`stride ${stride} must be between 1 and the context length ${nCtx}`);
  const all = [...prefixIds(model), ...encodeText(model, text)];
  const seqs: Sequence[] = [];
  for (let a = 1; a < all.length; a += stride) {
    const b = Math.min(a + stride, all.length);
    seqs.push({ tokens: all.slice(Math.max(0, b - 1 - nCtx), b), scored: b - a });
  }
  const res = scoreSequences(model, seqs, batchSize, fwd, stats);
  return { ll: res.reduce((s, r) => s + r.ll, 0), tokens: all.length - 1 };
}
