/**
 * Metrics as lm-evaluation-harness computes them (lm_eval/api/task.py process_results, api/metrics.py,
 * filters/extraction.py, tasks/truthfulqa/utils.py) and HumanEval's pass@k (Chen et al. 2021).
 * Small pure functions: tests check them against hand-computed values.
 */

/** Python's len(): code points, not UTF-16 units (the harness normalises acc_norm by it). */
export function pyLen(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

function argmax(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i; // first maximum, as np.argmax
  return best;
}

/**
 * Multiple choice: acc = argmax of the log-likelihoods is gold; acc_norm = argmax of ll / len(choice)
 * (characters of the choice without the target delimiter, as the harness's completion_len).
 */
export function multipleChoice(lls: readonly number[], choices: readonly string[], gold: number): { acc: number; acc_norm: number; pred: number; pred_norm: number } {
  const pred = argmax(lls);
  const pred_norm = argmax(lls.map((l, i) => l / pyLen(choices[i]!)));
  return { acc: pred === gold ? 1 : 0, acc_norm: pred_norm === gold ? 1 : 0, pred, pred_norm };
}

/** TruthfulQA MC2: Σ p(true answers) / Σ p(all answers), with p = exp(ll) (computed stably). */
export function mc2(lls: readonly number[], labels: readonly number[]): number {
  const m = Math.max(...lls);
  const p = lls.map((l) => Math.exp(l - m));
  const total = p.reduce((a, b) => a + b, 0);
  return p.reduce((s, x, i) => s + (labels[i] === 1 ? x : 0), 0) / total;
}

export function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** The harness's mean_stderr: sample standard deviation (n − 1) / √n. */
export function meanStderr(xs: readonly number[]): number {
  if (xs.length < 2) return NaN;
  const mu = mean(xs);
  return Math.sqrt(xs.reduce((s, x) => s + (x - mu) ** 2, 0) / (xs.length - 1)) / Math.sqrt(xs.length);
}

/**
 * Unbiased pass@k from n samples with c correct (Chen et al. 2021, human-eval's estimate_pass_at_k):
 * 1 − C(n−c, k) / C(n, k), computed as 1 − Π_{i=n−c+1..n} (1 − k/i).
 */
export function passAtK(n: number, c: number, k: number): number {
  if (k > n) throw new Error(`pass@${k} needs at least ${k} samples per problem (have ${n})`);
  if (n - c < k) return 1;
  let prod = 1;
  for (let i = n - c + 1; i <= n; i++) prod *= 1 - k / i;
  return 1 - prod;
}

// ------------------------------------------------------------------------------------- GSM8K

export const GSM8K_STRICT = /#### (\-?[0-9\.\,]+)/g;
export const GSM8K_FLEXIBLE = /(-?[$0-9.,]{2,})|(-?[0-9]+)/g;

/**
 * The harness's RegexFilter: all matches (re.findall), take match[groupSelect]; with several groups take the
 * first non-empty one; strip; "[invalid]" when nothing matches.
 */
export function regexExtract(text: string, pattern: RegExp, groupSelect: number): string {
  const matches = [...text.matchAll(new RegExp(pattern.source, 'g'))];
  if (!matches.length) return '[invalid]';
  const m = matches[groupSelect < 0 ? matches.length + groupSelect : groupSelect];
  if (!m) return '[invalid]';
  const groups = m.length > 2 ? m.slice(1).filter((g) => g) : [m.length > 1 ? (m[1] ?? '') : m[0]];
  return groups.length ? groups[0]!.trim() : '[invalid]';
}

export function gsm8kStrict(text: string): string {
  return regexExtract(text, GSM8K_STRICT, 0);
}

export function gsm8kFlexible(text: string): string {
  return regexExtract(text, GSM8K_FLEXIBLE, -1);
}

/** exact_match with gsm8k.yaml's settings: drop ",", "$", everything up to "#### ", a final "."; ignore case. */
export function gsm8kNormalize(s: string): string {
  // Python's "\.$" also matches before a final newline.
  return s.replace(/,/g, '').replace(/\$/g, '').replace(/[\s\S]*#### /g, '').replace(/\.(?=\n?$)/, '').toLowerCase();
}

export function exactMatch(prediction: string, reference: string): number {
  return gsm8kNormalize(prediction) === gsm8kNormalize(reference) ? 1 : 0;
}
