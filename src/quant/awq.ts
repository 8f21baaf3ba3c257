/**
 * AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization"): a few input channels carry large
 * activations, and their weights matter most. Scaling those weight columns up by s before rounding (and
 * the activations down by 1/s, folded into the op that produces them) shrinks their relative rounding
 * error. Per input channel s = s_xᵅ with s_x = mean |x| over calibration tokens, normalised as AutoAWQ does
 * (s / √(max s · min s)); α is searched on a grid to minimise the output error of the layers that share
 * the input, ‖X·(Q(W·diag s)·diag(1/s) − W)ᵀ‖², with Q = group-wise int4 round-to-nearest.
 * α = 0 is plain RTN, so the chosen α is never worse than RTN on the calibration data.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type GroupSpec, dequantizeInt4, quantizeRtn } from './int.js';

/** One layer reading the shared input: its weight [out, in]. */
export interface AwqLayer {
  w: Float32Array;
  out: number;
}

export interface AwqResult {
  alpha: number;
  /** [in] the per-input-channel scales for the chosen α (all 1 when α = 0). */
  scales: Float32Array;
  /** Output error (mean squared, over tokens and outputs of all layers) at each α of the grid. */
  errors: number[];
  grid: number[];
}

/** Mean |x| per input channel of X [N, in]. */
export function activationMagnitudes(x: Float32Array, N: number, inn: number): Float32Array {
  const m = new Float32Array(inn);
  for (let t = 0; t < N; t++) for (let i = 0; i < inn; i++) m[i]! += Math.abs(x[t * inn + i]!);
  for (let i = 0; i < inn; i++) m[i]! /= N;
  return m;
}

export function awqScales(magnitudes: Float32Array, alpha: number): Float32Array {
  const s = magnitudes.map((m) => Math.max(m, 1e-4) ** alpha);
  let lo = Infinity, hi = 0;
  for (const v of s) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const norm = Math.sqrt(hi * lo);
  return s.map((v) => v / norm);
}

/** The weight after scaling, quantizing and unscaling, [out, in]: what the layer computes with. */
export function scaledRoundTrip(w: Float32Array, out: number, inn: number, s: Float32Array, spec: GroupSpec): Float32Array {
  const ws = new Float32Array(out * inn);
  for (let r = 0; r < out; r++) for (let c = 0; c < inn; c++) ws[r * inn + c] = w[r * inn + c]! * s[c]!;
  const deq = dequantizeInt4(quantizeRtn(ws, out, inn, spec));
  for (let r = 0; r < out; r++) for (let c = 0; c < inn; c++) deq[r * inn + c] = deq[r * inn + c]! / s[c]!;
  return deq;
}

/** Mean squared output difference ‖X·(Wq − W)ᵀ‖² / (N·out), matmul on the tfjs backend. */
export function outputError(x: tf.Tensor2D, w: Float32Array, wq: Float32Array, out: number): number {
  const inn = x.shape[1];
  const dT = new Float32Array(inn * out); // [in, out] so the matmul needs no transpose flag
  for (let r = 0; r < out; r++) for (let c = 0; c < inn; c++) dT[c * out + r] = wq[r * inn + c]! - w[r * inn + c]!;
  return tf.tidy(() => tf.mean(tf.square(tf.matMul(x, tf.tensor2d(dT, [inn, out])))).dataSync()[0]!);
}

/** Grid search of α ∈ {0, 1/n, …, (n−1)/n} for the layers sharing the calibration input x [N, in]. */
export function awqSearch(x: tf.Tensor2D, layers: AwqLayer[], spec: GroupSpec, nGrid = 20): AwqResult {
  const [N, inn] = x.shape;
  const magnitudes = activationMagnitudes(x.dataSync() as Float32Array, N, inn);
  const grid = Array.from({ length: nGrid }, (_, i) => i / nGrid);
  const errors: number[] = [];
  let best = 0;
  for (const [k, alpha] of grid.entries()) {
    const s = awqScales(magnitudes, alpha);
    let err = 0;
    for (const l of layers) err += outputError(x, l.w, scaledRoundTrip(l.w, l.out, inn, s, spec), l.out);
    errors.push(err / layers.length);
    if (errors[k]! < errors[best]!) best = k;
  }
  const alpha = grid[best]!;
  return { alpha, scales: alpha === 0 ? new Float32Array(inn).fill(1) : awqScales(magnitudes, alpha), errors, grid };
}
