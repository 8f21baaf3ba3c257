/** Language-model losses as small pure functions over tensors. */
import * as tf from '@tensorflow/tfjs-core';
import { type ForwardOptions, type ModelConfig, type Params, forward } from '../model/gpt.js';
import { oneHotFloat } from '../model/kernels.js';

/** The batch shape every next-token stage shares (pretrain: no mask; sft/lora: mask of trained targets). */
export interface TokenBatch {
  inputs: tf.Tensor2D; // [B, T] int32
  targets: tf.Tensor1D; // [B*T] int32
  mask?: tf.Tensor1D; // [B*T] float32, 1 = counts
}

/** Next-token loss of a model on a batch: mean cross-entropy (over mask positions when there is a mask). */
export function modelLoss(params: Params, config: ModelConfig, batch: TokenBatch, fwd: ForwardOptions = {}): tf.Scalar {
  return tf.tidy(() => {
    const { logits } = forward(params, config, batch.inputs, fwd);
    return crossEntropy(tf.reshape(logits, [-1, config.vocab_size]) as tf.Tensor2D, batch.targets, batch.mask);
  });
}

/**
 * Mean token cross-entropy. logits [N, V], targets [N] int32, mask [N] (1 = counts) optional.
 * Uses log-softmax and a one-hot product (gather's gradient has no WASM kernel).
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D, mask?: tf.Tensor1D): tf.Scalar {
  return tf.tidy(() => {
    const nll = tokenNll(logits, targets);
    if (!mask) return tf.mean(nll) as tf.Scalar;
    // max(1, Σmask) keeps an all-masked batch at loss 0 instead of NaN.
    return tf.div(tf.sum(tf.mul(nll, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
  });
}

/** Per-token negative log-likelihood [N]. */
export function tokenNll(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => {
    const logp = tf.logSoftmax(logits);
    const picked = tf.sum(tf.mul(logp, oneHotFloat(targets, logits.shape[1])), -1);
    return tf.neg(picked) as tf.Tensor1D;
  });
}
