/**
 * The pieces of PPO (Schulman et al. 2017; RLHF as in Ziegler et al. 2019, InstructGPT, TRL) and GRPO
 * (DeepSeekMath, Shao et al. 2024) as small pure functions.
 *
 * Rows are sequences (one per rollout), columns response tokens; `mask` is 1 on real response tokens
 * and 0 on the padding after a sequence's EOS. Advantages and returns are plain numbers (no gradient
 * flows through them); the losses are tensors (they are differentiated).
 */
import * as tf from '@tensorflow/tfjs-core';

export type Rows = number[][];

// ---------------------------------------------------------------------------------------------
// Advantages
// ---------------------------------------------------------------------------------------------

/**
 * Generalised advantage estimation (Schulman et al. 2016), per row, right to left:
 *   δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   returns_t = A_t + V_t,
 * with V and A zero past the last real token (the episode ends at EOS), and A = returns = 0 on padding.
 */
export function gae(rewards: Rows, values: Rows, mask: Rows, gamma: number, lam: number): { advantages: Rows; returns: Rows } {
  const advantages: Rows = [], returns: Rows = [];
  rewards.forEach((r, i) => {
    const v = values[i]!, m = mask[i]!;
    const adv = new Array<number>(r.length).fill(0), ret = new Array<number>(r.length).fill(0);
    let nextValue = 0, nextAdv = 0;
    for (let t = r.length - 1; t >= 0; t--) {
      if (!m[t]) {
        nextValue = 0;
        nextAdv = 0;
        continue;
      }
      const delta = r[t]! + gamma * nextValue - v[t]!;
      nextAdv = delta + gamma * lam * nextAdv;
      adv[t] = nextAdv;
      ret[t] = nextAdv + v[t]!;
      nextValue = v[t]!;
    }
    advantages.push(adv);
    returns.push(ret);
  });
  return { advantages, returns };
}

/** PPO's per-token reward: −β·KL on every response token, plus the sequence's score on its last token. */
export function shapeRewards(scores: readonly number[], kl: number[][], mask: number[][], beta: number): number[][] {
  return kl.map((row, i) => {
    const out = row.map((k, t) => (mask[i]![t] ? -beta * k : 0));
    const last = mask[i]!.lastIndexOf(1);
    if (last >= 0) out[last]! += scores[i]!;
    return out;
  });
}

/** Mean and unbiased variance (Bessel's n/(n−1), as TRL's masked_var) of the entries where mask is 1. */
export function maskedMoments(x: Rows, mask: Rows): { mean: number; variance: number; count: number } {
  let sum = 0, n = 0;
  x.forEach((row, i) => row.forEach((v, t) => {
    if (mask[i]![t]) {
      sum += v;
      n += 1;
    }
  }));
  const mean = n > 0 ? sum / n : 0;
  let ss = 0;
  x.forEach((row, i) => row.forEach((v, t) => {
    if (mask[i]![t]) ss += (v - mean) ** 2;
  }));
  return { mean, variance: n > 1 ? ss / (n - 1) : 0, count: n };
}

/**
 * (x − mean)/√(var + 1e-8) over the masked entries; with shiftMean false the mean is added back (TRL
 * whitens rewards that way, keeping their sign). Padding stays 0.
 */
export function whiten(x: Rows, mask: Rows, shiftMean = true): Rows {
  const { mean, variance } = maskedMoments(x, mask);
  const scale = 1 / Math.sqrt(variance + 1e-8);
  return x.map((row, i) => row.map((v, t) => (mask[i]![t] ? (v - mean) * scale + (shiftMean ? 0 : mean) : 0)));
}

/**
 * GRPO's outcome advantages: scores come in consecutive groups of G samples of one prompt;
 * A = (r − mean of the group) / (std of the group + eps), std unbiased as torch.std (TRL's GRPOTrainer).
 * A group whose samples all score the same gets 0: nothing to prefer.
 */
export function groupAdvantages(scores: number[], groupSize: number, eps = 1e-4): number[] {
  if (groupSize < 2) throw new Error(`GRPO needs at least 2 samples per prompt (group_size ${groupSize})`);
  if (scores.length % groupSize !== 0) throw new Error(`${scores.length} scores do not split into groups of ${groupSize}`);
  const out: number[] = [];
  for (let g = 0; g < scores.length; g += groupSize) {
    const group = scores.slice(g, g + groupSize);
    const mean = group.reduce((a, b) => a + b, 0) / groupSize;
    const std = Math.sqrt(group.reduce((a, b) => a + (b - mean) ** 2, 0) / (groupSize - 1));
    for (const r of group) out.push((r - mean) / (std + eps));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// KL penalty
// ---------------------------------------------------------------------------------------------

export type KlEstimator = 'k1' | 'k2' | 'k3';

/**
 * Per-token estimates of KL(π ‖ π_ref) from log-probs of tokens sampled from π (Schulman, "Approximating
 * KL divergence", 2020). With log r = log π_ref − log π:
 *   k1 = −log r (unbiased, can be negative), k2 = ½(log r)² (biased, low variance),
 *   k3 = (r − 1) − log r (unbiased, always ≥ 0; DeepSeekMath's GRPO penalty).
 */
export function klEstimate(logp: tf.Tensor, logpRef: tf.Tensor, kind: KlEstimator): tf.Tensor {
  return tf.tidy(() => {
    const logr = tf.sub(logpRef, logp);
    if (kind === 'k1') return tf.neg(logr);
    if (kind === 'k2') return tf.mul(0.5, tf.square(logr));
    return tf.sub(tf.sub(tf.exp(logr), 1), logr);
  });
}

/** β for the KL penalty: fixed, or Ziegler et al.'s proportional controller toward a target KL. */
export class KlController {
  constructor(public value: number, private readonly target?: number, private readonly horizon = 10000) {}

  /**
   * After a batch of nSteps episodes with mean sequence KL `current`:
   *   e = clip(current/target − 1, −0.2, 0.2),  β ← β·(1 + e·nSteps/horizon)   (fixed β: no change)
   */
  update(current: number, nSteps: number): void {
    if (this.target === undefined) return;
    const error = Math.min(0.2, Math.max(-0.2, current / this.target - 1));
    this.value *= 1 + (error * nSteps) / this.horizon;
  }

  get adaptive(): boolean {
    return this.target !== undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Losses (tensors: [rows, tokens], masked)
// ---------------------------------------------------------------------------------------------

/** Mean over the entries where mask is 1 (0 when there are none). */
export function maskedMean(x: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  return tf.tidy(() => tf.div(tf.sum(tf.mul(x, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar);
}

/** Mean over each row's masked entries, then over rows (DeepSeekMath's 1/G Σ_i 1/|o_i| Σ_t). */
export function sequenceMean(x: tf.Tensor2D, mask: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => tf.mean(tf.div(tf.sum(tf.mul(x, mask), 1), tf.maximum(tf.sum(mask, 1), 1))) as tf.Scalar);
}

export interface PolicyLossParts {
  /** Per-token clipped surrogate loss max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(logp − oldLogp). */
  perToken: tf.Tensor2D;
  /** 1 where the clipped branch was taken (the gradient is cut there). */
  clipped: tf.Tensor2D;
  ratio: tf.Tensor2D;
}

/** The PPO-clip surrogate per token (to be minimised). */
export function clippedSurrogate(logp: tf.Tensor2D, oldLogp: tf.Tensor2D, advantages: tf.Tensor2D, cliprange: number): PolicyLossParts {
  return tf.tidy(() => {
    const ratio = tf.exp(tf.sub(logp, oldLogp)) as tf.Tensor2D;
    const unclipped = tf.mul(tf.neg(advantages), ratio);
    const clippedLoss = tf.mul(tf.neg(advantages), tf.clipByValue(ratio, 1 - cliprange, 1 + cliprange));
    return {
      perToken: tf.maximum(unclipped, clippedLoss) as tf.Tensor2D,
      clipped: tf.cast(tf.greater(clippedLoss, unclipped), 'float32') as tf.Tensor2D,
      ratio,
    };
  });
}

export interface PpoPolicyLoss {
  loss: tf.Scalar;
  clipfrac: tf.Scalar;
  /** ½·mean (logp − oldLogp)², TRL's approxkl. */
  approxKl: tf.Scalar;
  ratio: tf.Scalar;
}

/** PPO's policy loss, masked token mean (TRL's PPOTrainer). */
export function ppoPolicyLoss(logp: tf.Tensor2D, oldLogp: tf.Tensor2D, advantages: tf.Tensor2D, mask: tf.Tensor2D, cliprange: number): PpoPolicyLoss {
  return tf.tidy(() => {
    const s = clippedSurrogate(logp, oldLogp, advantages, cliprange);
    return {
      loss: maskedMean(s.perToken, mask),
      clipfrac: maskedMean(s.clipped, mask),
      approxKl: tf.mul(0.5, maskedMean(tf.square(tf.sub(logp, oldLogp)), mask)) as tf.Scalar,
      ratio: maskedMean(s.ratio, mask),
    };
  });
}

/**
 * PPO's clipped value loss: ½·mean max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, ±ε).
 * clipfrac: share of tokens where the clipped term was the larger one.
 */
export function clippedValueLoss(values: tf.Tensor2D, oldValues: tf.Tensor2D, returns: tf.Tensor2D, mask: tf.Tensor2D, cliprange: number): { loss: tf.Scalar; clipfrac: tf.Scalar } {
  return tf.tidy(() => {
    const vClipped = tf.add(oldValues, tf.clipByValue(tf.sub(values, oldValues), -cliprange, cliprange));
    const l1 = tf.square(tf.sub(values, returns)), l2 = tf.square(tf.sub(vClipped, returns));
    return {
      loss: tf.mul(0.5, maskedMean(tf.maximum(l1, l2), mask)) as tf.Scalar,
      clipfrac: maskedMean(tf.cast(tf.greater(l2, l1), 'float32'), mask),
    };
  });
}

/**
 * GRPO's loss: the clipped surrogate plus β·k3 KL to the reference inside the loss (not in the reward),
 * averaged per sequence then over sequences (DeepSeekMath eq. 3).
 */
export function grpoLoss(logp: tf.Tensor2D, oldLogp: tf.Tensor2D, logpRef: tf.Tensor2D, advantages: tf.Tensor2D, mask: tf.Tensor2D, cliprange: number, beta: number): PpoPolicyLoss & { kl: tf.Scalar } {
  return tf.tidy(() => {
    const s = clippedSurrogate(logp, oldLogp, advantages, cliprange);
    const kl = klEstimate(logp, logpRef, 'k3') as tf.Tensor2D;
    const perToken = beta > 0 ? tf.add(s.perToken, tf.mul(beta, kl)) as tf.Tensor2D : s.perToken;
    return {
      loss: sequenceMean(perToken, mask),
      clipfrac: maskedMean(s.clipped, mask),
      approxKl: tf.mul(0.5, maskedMean(tf.square(tf.sub(logp, oldLogp)), mask)) as tf.Scalar,
      ratio: maskedMean(s.ratio, mask),
      kl: sequenceMean(kl, mask),
    };
  });
}

/** Entropy of each distribution from its log-probabilities, [..., V] → [...]: −Σ p·log p. */
export function entropyFromLogProbs(logProbs: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.neg(tf.sum(tf.mul(tf.exp(logProbs), logProbs), -1)));
}
