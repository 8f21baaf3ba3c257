/**
 * Preference losses as small pure functions over tensors (the same formulas as TRL's RewardTrainer and
 * DPOTrainer), plus the per-sequence log-probability they read.
 *
 *  - Bradley–Terry (reward models): −log σ(r_c − r_r − margin), mean over pairs, plus
 *    center_rewards_coefficient · mean((r_c + r_r)²) (Eisenstein et al. 2023, TRL's option) which keeps
 *    rewards centred on zero.
 *  - DPO (Rafailov et al. 2023) over the implicit reward logits z = (π_c − π_r) − (ref_c − ref_r):
 *      sigmoid: −(1−ε)·log σ(βz) − ε·log σ(−βz)     (ε = label_smoothing, "conservative DPO")
 *      ipo:     (z − 1/(2β))²                        (Azar et al. 2023)
 *      hinge:   max(0, 1 − βz)                       (SLiC)
 *    rewards/chosen = β(π_c − ref_c), rewards/rejected = β(π_r − ref_r).
 */
import * as tf from '@tensorflow/tfjs-core';
import { tokenNll } from '../train/losses.js';

/**
 * log σ(x), stable for large |x|, with the exact gradient σ(−x) everywhere. (Written with customGrad:
 * min(x,0) − log(1+e^−|x|) has a kink in its autodiff at x = 0, exactly where DPO starts.)
 */
export const logSigmoid: (x: tf.Tensor) => tf.Tensor = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x]);
  const value = tf.sub(tf.minimum(x, 0), tf.log(tf.add(1, tf.exp(tf.neg(tf.abs(x))))));
  return { value, gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.mul(dy, tf.sigmoid(tf.neg(saved[0]!))) };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as (x: tf.Tensor) => tf.Tensor;

export interface BradleyTerryOptions {
  /** Per-pair margin [B] the chosen reward must beat the rejected one by (TRL's `margin` column). */
  margin?: tf.Tensor1D;
  /** TRL's center_rewards_coefficient: adds coef · mean((r_c + r_r)²). */
  centerRewardsCoefficient?: number;
}

/** Reward-model loss over rewards [B] of the chosen and rejected responses. */
export function bradleyTerryLoss(chosen: tf.Tensor1D, rejected: tf.Tensor1D, o: BradleyTerryOptions = {}): tf.Scalar {
  return tf.tidy(() => {
    let diff = tf.sub(chosen, rejected);
    if (o.margin) diff = tf.sub(diff, o.margin);
    let loss = tf.neg(tf.mean(logSigmoid(diff)));
    if (o.centerRewardsCoefficient) loss = tf.add(loss, tf.mul(o.centerRewardsCoefficient, tf.mean(tf.square(tf.add(chosen, rejected)))));
    return loss as tf.Scalar;
  });
}

export type DpoLossType = 'sigmoid' | 'ipo' | 'hinge';

export interface DpoOptions {
  beta: number;
  lossType: DpoLossType;
  /** Conservative DPO: the probability that a label is flipped (sigmoid loss only). */
  labelSmoothing?: number;
}

export interface DpoLogps {
  policyChosen: tf.Tensor1D;
  policyRejected: tf.Tensor1D;
  refChosen: tf.Tensor1D;
  refRejected: tf.Tensor1D;
}

/** Per-pair DPO losses [B] and the implicit rewards (for logging). */
export function dpoLoss(l: DpoLogps, o: DpoOptions): { losses: tf.Tensor1D; chosenRewards: tf.Tensor1D; rejectedRewards: tf.Tensor1D } {
  return tf.tidy(() => {
    const z = tf.sub(tf.sub(l.policyChosen, l.policyRejected), tf.sub(l.refChosen, l.refRejected));
    let losses: tf.Tensor;
    if (o.lossType === 'sigmoid') {
      const ls = o.labelSmoothing ?? 0;
      const bz = tf.mul(o.beta, z);
      losses = tf.neg(tf.add(tf.mul(1 - ls, logSigmoid(bz)), tf.mul(ls, logSigmoid(tf.neg(bz)))));
    } else if (o.lossType === 'ipo') {
      losses = tf.square(tf.sub(z, 1 / (2 * o.beta)));
    } else {
      losses = tf.relu(tf.sub(1, tf.mul(o.beta, z)));
    }
    // Metrics only: they never enter the loss, so no gradient flows through them.
    const reward = (p: tf.Tensor1D, r: tf.Tensor1D) => tf.mul(o.beta, tf.sub(p, r)) as tf.Tensor1D;
    return { losses: losses as tf.Tensor1D, chosenRewards: reward(l.policyChosen, l.refChosen), rejectedRewards: reward(l.policyRejected, l.refRejected) };
  });
}

/**
 * Summed log-probability of each row's response tokens. logits [R, T, V], targets [R·T] int32, mask
 * [R·T] (1 on response targets) → [R].
 */
export function sequenceLogps(logits: tf.Tensor3D, targets: tf.Tensor1D, mask: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => {
    const [R, T, V] = logits.shape;
    const logp = tf.neg(tokenNll(tf.reshape(logits, [R * T, V]) as tf.Tensor2D, targets));
    return tf.sum(tf.reshape(tf.mul(logp, mask), [R, T]), 1) as tf.Tensor1D;
  });
}
