/**
 * Next-token sampling on a logits row: greedy, temperature, top-k, top-p (nucleus), repetition penalty,
 * OpenAI's presence/frequency penalties, and log-probabilities for the API's `logprobs`.
 * Temperature + top-p follow llama2.c's run.c step for step (same RNG, same cutoff and cdf walk), so a
 * seeded run of a llama2.c model reproduces its published samples.
 */
import { Rng } from '../util/rng.js';

export interface SamplerOptions {
  temperature: number; // 0 = greedy
  top_k: number; // 0 = off
  top_p: number; // 1 = off
  repetition_penalty: number; // 1 = off
  /** OpenAI: subtract presence·[count>0] + frequency·count from the logits of generated tokens. 0 = off. */
  presence_penalty?: number;
  frequency_penalty?: number;
  seed?: number;
}

export class Sampler {
  private readonly rng: Rng;

  /** rng: share the caller's generator (e.g. a trainer's, saved for resume) instead of seeding one. */
  constructor(private readonly o: SamplerOptions, rng?: Rng) {
    this.rng = rng ?? new Rng(o.seed ?? Date.now());
  }

  /**
   * Pick the next token id from raw logits; `history` (prompt + output) feeds the repetition penalty,
   * `generated` (the output so far, as OpenAI and vLLM count it) the presence and frequency penalties.
   */
  sample(rawLogits: Float32Array, history: readonly number[] = [], generated: readonly number[] = history): number {
    const logits = rawLogits.slice(); // (Float32Array.from would walk the iterator: slower than the whole softmax)
    if (this.o.repetition_penalty !== 1) applyRepetitionPenalty(logits, history, this.o.repetition_penalty);
    if (this.o.presence_penalty || this.o.frequency_penalty) applyPresenceFrequencyPenalty(logits, generated, this.o.presence_penalty ?? 0, this.o.frequency_penalty ?? 0);
    if (this.o.temperature === 0) return argmax(logits);
    const t = this.o.temperature;
    for (let i = 0; i < logits.length; i++) logits[i] = logits[i]! / t;
    if (this.o.top_k > 0 && this.o.top_k < logits.length) keepTopK(logits, this.o.top_k);
    const probs = softmax(logits);
    const coin = this.rng.nextFloat();
    return this.o.top_p > 0 && this.o.top_p < 1 ? sampleTopP(probs, this.o.top_p, coin) : sampleMultinomial(probs, coin);
  }
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/** CTRL's penalty: divide positive logits (multiply negative ones) of tokens already seen. */
export function applyRepetitionPenalty(logits: Float32Array, history: readonly number[], penalty: number): void {
  for (const id of new Set(history)) {
    const v = logits[id]!;
    logits[id] = v > 0 ? v / penalty : v * penalty;
  }
}

/** OpenAI's penalties: logit[j] -= presence·(c[j] > 0) + frequency·c[j], c[j] = times j was generated. */
export function applyPresenceFrequencyPenalty(logits: Float32Array, generated: readonly number[], presence: number, frequency: number): void {
  const counts = new Map<number, number>();
  for (const id of generated) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, c] of counts) logits[id] = logits[id]! - presence - frequency * c;
}

/** log softmax of a logits row (the model's own distribution, before sampling parameters, as vLLM reports). */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (v) => v - lse);
}

/** The k most likely ids of a log-probability row, best first (ties: lower id first). */
export function topLogprobs(logprobs: Float64Array, k: number): { id: number; logprob: number }[] {
  const best: { id: number; logprob: number }[] = [];
  if (k <= 0) return best;
  for (let id = 0; id < logprobs.length; id++) {
    const lp = logprobs[id]!;
    if (best.length === k && lp <= best[k - 1]!.logprob) continue;
    let at = best.length;
    while (at > 0 && best[at - 1]!.logprob < lp) at--;
    best.splice(at, 0, { id, logprob: lp });
    if (best.length > k) best.pop();
  }
  return best;
}

function keepTopK(logits: Float32Array, k: number): void {
  const kth = Float32Array.from(logits).sort().reverse()[k - 1]!;
  for (let i = 0; i < logits.length; i++) if (logits[i]! < kth) logits[i] = -Infinity;
}

/** Float32 softmax in run.c's order (max, exp, sum, divide). */
export function softmax(x: Float32Array): Float32Array {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i]! > max) max = x[i]!;
  const out = new Float32Array(x.length);
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    out[i] = Math.exp(x[i]! - max);
    sum = Math.fround(sum + out[i]!);
  }
  for (let i = 0; i < x.length; i++) out[i] = out[i]! / sum;
  return out;
}

export function sampleMultinomial(probs: Float32Array, coin: number): number {
  let cdf = 0;
  for (let i = 0; i < probs.length; i++) {
    cdf = Math.fround(cdf + probs[i]!);
    if (coin < cdf) return i;
  }
  return probs.length - 1; // rounding errors
}

/** Nucleus sampling exactly as run.c: drop p < (1-top_p)/(n-1), sort, cut where the mass first exceeds top_p. */
export function sampleTopP(probs: Float32Array, topP: number, coin: number): number {
  const cutoff = Math.fround((1 - topP) / (probs.length - 1));
  const kept: { i: number; p: number }[] = [];
  for (let i = 0; i < probs.length; i++) if (probs[i]! >= cutoff) kept.push({ i, p: probs[i]! });
  kept.sort((a, b) => b.p - a.p);
  let mass = 0, last = kept.length - 1;
  for (let j = 0; j < kept.length; j++) {
    mass = Math.fround(mass + kept[j]!.p);
    if (mass > topP) {
      last = j;
      break;
    }
  }
  const r = Math.fround(coin * mass);
  let cdf = 0;
  for (let j = 0; j <= last; j++) {
    cdf = Math.fround(cdf + kept[j]!.p);
    if (r < cdf) return kept[j]!.i;
  }
  return kept[last]!.i;
}
