/**
 * GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
 * Transformers"), following the reference gptq.py: quantize W [out, in] one input column at a time and
 * push each column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian
 * of the layer's squared output error, H = 2·XᵀX/N over calibration inputs X [N, in].
 *
 *   dampening   H += λ·I with λ = damp_percent · mean(diag H) (keeps the Cholesky stable)
 *   Hinv        the upper Cholesky factor U of H⁻¹ (Uᵀ·U = H⁻¹): row i of U is what column i's error
 *               is multiplied by to update the remaining columns, U[i,i] normalises it
 *   lazy batch  columns are processed in blocks of `blockSize`; inside a block updates are immediate,
 *               the rest of the matrix gets one matrix product per block
 *   act-order   (desc_act) columns in order of decreasing H[i,i]; g_idx records each column's group
 *
 * Plain Float64Array math: layers of a few thousand columns at most, so O(in³) is seconds in JS.
 */
import { type GroupSpec, type Int4Weight, dequantizeValue, groupParams, numGroups, quantizeValue } from './int.js';

export interface GptqOptions extends GroupSpec {
  /** Fraction of the mean diagonal added to it (the paper's 1%). */
  dampPercent: number;
  blockSize: number;
  /** desc_act: quantize columns in order of decreasing Hessian diagonal. */
  actOrder: boolean;
}

export const GPTQ_DEFAULTS: Omit<GptqOptions, keyof GroupSpec> = { dampPercent: 0.01, blockSize: 128, actOrder: false };

// ---------------------------------------------------------------------------------------------
// Linear algebra on dense n×n row-major Float64Arrays
// ---------------------------------------------------------------------------------------------

/** Lower-triangular L with L·Lᵀ = A (A symmetric positive definite). */
export function cholesky(a: Float64Array, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j]!;
    for (let k = 0; k < j; k++) d -= L[j * n + k]! * L[j * n + k]!;
    if (!(d > 0)) throw new Error(`cholesky: matrix is not positive definite (pivot ${j} is ${d}); raise damp_percent`);
    const ljj = Math.sqrt(d);
    L[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = a[i * n + j]!;
      for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
      L[i * n + j] = s / ljj;
    }
  }
  return L;
}

/** L⁻¹ of a lower-triangular L (forward substitution, column by column). */
export function invertLower(L: Float64Array, n: number): Float64Array {
  const inv = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    inv[j * n + j] = 1 / L[j * n + j]!;
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s += L[i * n + k]! * inv[k * n + j]!;
      inv[i * n + j] = -s / L[i * n + i]!;
    }
  }
  return inv;
}

/** Upper-triangular U with Uᵀ·U = H⁻¹ (torch: cholesky(cholesky_inverse(cholesky(H)), upper=True)). */
export function inverseCholeskyUpper(H: Float64Array, n: number): Float64Array {
  const Linv = invertLower(cholesky(H, n), n);
  // H⁻¹ = L⁻ᵀ·L⁻¹: entry (i, j) = Σ_k Linv[k, i]·Linv[k, j], k ≥ max(i, j)
  const Hinv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = i; k < n; k++) s += Linv[k * n + i]! * Linv[k * n + j]!;
      Hinv[i * n + j] = s;
      Hinv[j * n + i] = s;
    }
  }
  const Lh = cholesky(Hinv, n);
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) U[j * n + i] = Lh[i * n + j]!;
  return U;
}

/** H = 2·XᵀX / N for inputs X [N, in] (row-major). */
export function hessian(x: Float32Array | Float64Array, N: number, inn: number): Float64Array {
  const H = new Float64Array(inn * inn);
  for (let t = 0; t < N; t++) {
    const row = t * inn;
    for (let i = 0; i < inn; i++) {
      const xi = x[row + i]!;
      if (xi === 0) continue;
      for (let j = 0; j <= i; j++) H[i * inn + j]! += xi * x[row + j]!;
    }
  }
  for (let i = 0; i < inn; i++) {
    for (let j = 0; j <= i; j++) {
      const v = (2 * H[i * inn + j]!) / N;
      H[i * inn + j] = v;
      H[j * inn + i] = v;
    }
  }
  return H;
}

// ---------------------------------------------------------------------------------------------
// The algorithm
// ---------------------------------------------------------------------------------------------

/** Quantize w [out, in] given the layer's Hessian H [in, in] (not modified). */
export function gptqQuantize(w: Float32Array, out: number, inn: number, hessianIn: Float64Array, o: GptqOptions): Int4Weight {
  const W = Float64Array.from(w);
  const H = Float64Array.from(hessianIn);
  // Columns no calibration input ever touched: their weight cannot matter, keep H invertible.
  for (let c = 0; c < inn; c++) {
    if (H[c * inn + c] === 0) {
      H[c * inn + c] = 1;
      for (let r = 0; r < out; r++) W[r * inn + c] = 0;
    }
  }
  const perm = Array.from({ length: inn }, (_, i) => i);
  if (o.actOrder) perm.sort((a, b) => H[b * inn + b]! - H[a * inn + a]! || a - b);
  const Wp = new Float64Array(out * inn), Hp = new Float64Array(inn * inn);
  for (let r = 0; r < out; r++) for (let j = 0; j < inn; j++) Wp[r * inn + j] = W[r * inn + perm[j]!]!;
  for (let i = 0; i < inn; i++) for (let j = 0; j < inn; j++) Hp[i * inn + j] = H[perm[i]! * inn + perm[j]!]!;
  let meanDiag = 0;
  for (let i = 0; i < inn; i++) meanDiag += Hp[i * inn + i]!;
  meanDiag /= inn;
  for (let i = 0; i < inn; i++) Hp[i * inn + i]! += o.dampPercent * meanDiag;
  const U = inverseCholeskyUpper(Hp, inn);

  const groupSize = o.groupSize > 0 ? o.groupSize : inn;
  const G = numGroups(inn, groupSize);
  const Qp = new Uint8Array(out * inn), scales = new Float32Array(G * out), zeros = new Uint8Array(G * out);
  const scaleOf = new Float64Array(out), zeroOf = new Float64Array(out);
  const groupValues = new Float64Array(groupSize);
  const B = Math.max(1, o.blockSize);
  for (let i1 = 0; i1 < inn; i1 += B) {
    const i2 = Math.min(inn, i1 + B), count = i2 - i1;
    const err = new Float64Array(out * count);
    for (let i = 0; i < count; i++) {
      const col = i1 + i;
      if (col % groupSize === 0) {
        // Group parameters from the weights as they are now (earlier columns' errors already pushed in).
        const g = col / groupSize, end = Math.min(inn, col + groupSize);
        for (let r = 0; r < out; r++) {
          for (let c = col; c < end; c++) groupValues[c - col] = Wp[r * inn + c]!;
          const p = groupParams(groupValues.subarray(0, end - col), o.sym);
          scaleOf[r] = scales[g * out + r] = p.scale;
          zeroOf[r] = zeros[g * out + r] = p.zero;
        }
      }
      const d = U[col * inn + col]!;
      for (let r = 0; r < out; r++) {
        const wv = Wp[r * inn + col]!;
        const q = quantizeValue(wv, scaleOf[r]!, zeroOf[r]!);
        Qp[r * inn + col] = q;
        const e = (wv - dequantizeValue(q, scaleOf[r]!, zeroOf[r]!)) / d;
        err[r * count + i] = e;
        for (let j = col + 1; j < i2; j++) Wp[r * inn + j]! -= e * U[col * inn + j]!;
      }
    }
    // Lazy batch update: W[:, i2:] -= Err · U[i1:i2, i2:]
    for (let r = 0; r < out; r++) {
      for (let i = 0; i < count; i++) {
        const e = err[r * count + i]!;
        if (e === 0) continue;
        const urow = (i1 + i) * inn;
        for (let j = i2; j < inn; j++) Wp[r * inn + j]! -= e * U[urow + j]!;
      }
    }
  }

  const q = new Uint8Array(out * inn), gIdx = new Int32Array(inn);
  for (let j = 0; j < inn; j++) {
    gIdx[perm[j]!] = Math.floor(j / groupSize);
    for (let r = 0; r < out; r++) q[r * inn + perm[j]!] = Qp[r * inn + j]!;
  }
  return { out, in: inn, groupSize: o.groupSize, sym: o.sym, q, scales, zeros, gIdx };
}
