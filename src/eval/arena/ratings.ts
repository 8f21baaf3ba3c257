/**
 * Ratings from pairwise battles, as Chatbot Arena computes them (lm-sys/FastChat
 * fastchat/serve/monitor/elo_analysis.py): online Elo, Bradley–Terry maximum likelihood, bootstrap
 * confidence intervals, and the pairwise win-fraction matrix.
 */
import { Rng } from '../../util/rng.js';

export type Winner = 'model_a' | 'model_b' | 'tie' | 'tie (bothbad)';
export const WINNERS: readonly Winner[] = ['model_a', 'model_b', 'tie', 'tie (bothbad)'];

export interface Battle {
  model_a: string;
  model_b: string;
  winner: Winner;
}

export interface EloOptions {
  k: number;
  scale: number;
  base: number;
  init: number;
}

export const ELO_DEFAULTS: EloOptions = { k: 4, scale: 400, base: 10, init: 1000 };

export function modelsOf(battles: readonly Battle[]): string[] {
  return [...new Set(battles.flatMap((b) => [b.model_a, b.model_b]))].sort();
}

/** Online Elo in battle order (FastChat compute_elo): a tie scores ½ for both sides. */
export function onlineElo(battles: readonly Battle[], o: EloOptions = ELO_DEFAULTS): Record<string, number> {
  const r: Record<string, number> = {};
  for (const m of modelsOf(battles)) r[m] = o.init;
  for (const b of battles) {
    const ra = r[b.model_a]!, rb = r[b.model_b]!;
    const ea = 1 / (1 + o.base ** ((rb - ra) / o.scale));
    const eb = 1 / (1 + o.base ** ((ra - rb) / o.scale));
    const sa = b.winner === 'model_a' ? 1 : b.winner === 'model_b' ? 0 : 0.5;
    r[b.model_a] = ra + o.k * (sa - ea);
    r[b.model_b] = rb + o.k * (1 - sa - eb);
  }
  return r;
}

/**
 * Bradley–Terry by maximum likelihood (FastChat compute_mle_elo): P(i beats j) = 1 / (1 + base^((R_j − R_i)/scale)).
 * A win counts twice and a tie once for each side (FastChat's weighting); the ratings are centred on `init`
 * (the unpenalised logistic regression FastChat fits from zero keeps Σβ = 0). Solved by Newton's method.
 */
export function bradleyTerry(battles: readonly Battle[], o: Omit<EloOptions, 'k'> = ELO_DEFAULTS, iterations = 200): Record<string, number> {
  const models = modelsOf(battles), p = models.length, idx = new Map(models.map((m, i) => [m, i]));
  // W[i][j]: weight of "i beats j".
  const W = Array.from({ length: p }, () => new Float64Array(p));
  for (const b of battles) {
    const a = idx.get(b.model_a)!, c = idx.get(b.model_b)!;
    if (b.winner === 'model_a') W[a]![c]! += 2;
    else if (b.winner === 'model_b') W[c]![a]! += 2;
    else { W[a]![c]! += 1; W[c]![a]! += 1; }
  }
  const s = Math.log(o.base);
  let total = 0;
  for (const row of W) for (const w of row) total += w;
  const beta = new Float64Array(p);
  for (let it = 0; it < iterations; it++) {
    const g = new Float64Array(p);
    const H = Array.from({ length: p }, () => new Float64Array(p)); // the negative Hessian
    for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) {
      if (i === j) continue;
      const n = W[i]![j]! + W[j]![i]!;
      if (n === 0) continue;
      const sig = 1 / (1 + Math.exp(-s * (beta[i]! - beta[j]!)));
      g[i]! += s * (W[i]![j]! - n * sig);
      const h = s * s * n * sig * (1 - sig);
      H[i]![i]! += h;
      H[i]![j]! -= h;
    }
    // Converged (gradient of the mean log-likelihood ~0). A model that never loses has no finite MLE: its rating
    // grows until the gradient is this small, as an optimiser with a tolerance (FastChat's sklearn fit) stops too.
    if (Math.max(...g.map(Math.abs)) / total < 1e-9) break;
    // The likelihood only sees differences: adding 1·1ᵀ makes the system regular and keeps Σβ = 0; the tiny
    // ridge covers models in separate groups that never met.
    for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) H[i]![j]! += 1 + (i === j ? 1e-12 : 0);
    const step = solve(H, g);
    const big = Math.max(...step.map(Math.abs));
    const damp = big > 2 ? 2 / big : 1; // at most 2 (800 rating points) per step: no overflow on separable data
    for (let i = 0; i < p; i++) beta[i]! += damp * step[i]!;
  }
  const out: Record<string, number> = {};
  models.forEach((m, i) => (out[m] = o.scale * beta[i]! + o.init));
  return out;
}

/** Gaussian elimination with partial pivoting (p is the number of models: tiny). */
function solve(A: Float64Array[], b: Float64Array): Float64Array {
  const n = b.length, M = A.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r]![c]!) > Math.abs(M[piv]![c]!)) piv = r;
    [M[c], M[piv]] = [M[piv]!, M[c]!];
    for (let r = c + 1; r < n; r++) {
      const f = M[r]![c]! / M[c]![c]!;
      for (let k = c; k <= n; k++) M[r]![k]! -= f * M[c]![k]!;
    }
  }
  const x = new Float64Array(n);
  for (let r = n - 1; r >= 0; r--) {
    let v = M[r]![n]!;
    for (let k = r + 1; k < n; k++) v -= M[r]![k]! * x[k]!;
    x[r] = v / M[r]![r]!;
  }
  return x;
}

/** pandas' default quantile (linear interpolation between order statistics). */
export function quantile(sorted: readonly number[], q: number): number {
  const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export interface Interval {
  rating: number;
  median: number;
  lower: number;
  upper: number;
}

/**
 * 95 % intervals from `rounds` resamples of the battles with replacement (FastChat get_bootstrap_result):
 * 2.5 % and 97.5 % quantiles of each model's rating. Deterministic for a seed.
 */
export function bootstrap(battles: readonly Battle[], rate: (b: Battle[]) => Record<string, number>, rounds: number, seed: number): Record<string, Interval> {
  const rng = new Rng(seed);
  const samples: Record<string, number[]> = {};
  const models = modelsOf(battles);
  for (const m of models) samples[m] = [];
  for (let r = 0; r < rounds; r++) {
    const sample = Array.from({ length: battles.length }, () => battles[rng.nextInt(battles.length)]!);
    const ratings = rate(sample);
    for (const m of models) if (ratings[m] !== undefined) samples[m]!.push(ratings[m]!);
  }
  const full = rate([...battles]);
  const out: Record<string, Interval> = {};
  for (const m of models) {
    const s = samples[m]!.sort((a, b) => a - b);
    out[m] = { rating: full[m]!, median: quantile(s, 0.5), lower: quantile(s, 0.025), upper: quantile(s, 0.975) };
  }
  return out;
}

/**
 * Row beats column: wins of the row model against the column model (in either position) over all their
 * battles, ties included in the count (FastChat compute_pairwise_win_fraction). NaN where they never met.
 */
export function winRates(battles: readonly Battle[]): { models: string[]; winRate: number[][]; counts: number[][] } {
  const models = modelsOf(battles), idx = new Map(models.map((m, i) => [m, i]));
  const wins = models.map(() => models.map(() => 0)), counts = models.map(() => models.map(() => 0));
  for (const b of battles) {
    const a = idx.get(b.model_a)!, c = idx.get(b.model_b)!;
    counts[a]![c]!++;
    counts[c]![a]!++;
    if (b.winner === 'model_a') wins[a]![c]!++;
    if (b.winner === 'model_b') wins[c]![a]!++;
  }
  return { models, winRate: wins.map((row, i) => row.map((w, j) => (counts[i]![j]! ? w / counts[i]![j]! : NaN))), counts };
}
