/**
 * Round-to-nearest weight quantizers and AutoGPTQ's int4 packing, as pure functions over typed arrays.
 *
 * Orientation: a weight matrix here is torch's [out, in], row-major (row r = output channel r), the
 * orientation of the checkpoint file and of the GPTQ/AWQ papers; the model keeps [in, out] in memory.
 *
 *   int8  symmetric per-output-channel absmax (LLM.int8()'s vector-wise scheme): q = round(w / s), s = absmax / 127.
 *   int4  group-wise over the input dimension (a group = `groupSize` consecutive input columns of one row):
 *         q = clamp(round(w / s) + z, 0, 15), w ≈ (q − z)·s; symmetric (z = 8) or with a zero point.
 *
 * Scales are rounded to float16 before the weights are rounded, because the file stores them as F16:
 * the integers are chosen against the scale that will actually be used.
 */
import { f16ToF32, f32ToF16 } from '../checkpoint/safetensors.js';

/** Round half to even, like torch.round (Math.round rounds halves up). */
export function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function toF16(x: number): number {
  return f16ToF32(f32ToF16(x));
}

// ---------------------------------------------------------------------------------------------
// int8
// ---------------------------------------------------------------------------------------------

export interface Int8Weight {
  out: number;
  in: number;
  /** [out, in] (0 at outlier columns) */
  q: Int8Array;
  /** [out]: w[r, c] ≈ q[r, c] · scale[r] */
  scale: Float32Array;
  /** LLM.int8()'s outlier columns, kept in float: input indices and their weights [out, n]. */
  outliers?: { idx: Int32Array; w: Float32Array };
}

/** Absmax per output row over the non-outlier columns; outlier columns (input features) stay float. */
export function quantizeInt8(w: Float32Array, out: number, inn: number, outlierColumns: readonly number[] = []): Int8Weight {
  const q = new Int8Array(out * inn), scale = new Float32Array(out);
  const isOutlier = new Uint8Array(inn);
  for (const c of outlierColumns) isOutlier[c] = 1;
  for (let r = 0; r < out; r++) {
    let absmax = 0;
    for (let c = 0; c < inn; c++) if (!isOutlier[c]) absmax = Math.max(absmax, Math.abs(w[r * inn + c]!));
    const s = Math.fround(absmax > 0 ? absmax / 127 : 1);
    scale[r] = s;
    for (let c = 0; c < inn; c++) q[r * inn + c] = isOutlier[c] ? 0 : Math.max(-127, Math.min(127, rint(w[r * inn + c]! / s)));
  }
  if (!outlierColumns.length) return { out, in: inn, q, scale };
  const idx = Int32Array.from([...outlierColumns].sort((a, b) => a - b));
  const ow = new Float32Array(out * idx.length);
  for (let r = 0; r < out; r++) idx.forEach((c, k) => (ow[r * idx.length + k] = w[r * inn + c]!));
  return { out, in: inn, q, scale, outliers: { idx, w: ow } };
}

export function dequantizeInt8(x: Int8Weight): Float32Array {
  const w = new Float32Array(x.out * x.in);
  for (let r = 0; r < x.out; r++) for (let c = 0; c < x.in; c++) w[r * x.in + c] = x.q[r * x.in + c]! * x.scale[r]!;
  const o = x.outliers;
  if (o) for (let r = 0; r < x.out; r++) o.idx.forEach((c, k) => (w[r * x.in + c] = o.w[r * o.idx.length + k]!));
  return w;
}

// ---------------------------------------------------------------------------------------------
// int4, group-wise (the representation GPTQ, AWQ and RTN share)
// ---------------------------------------------------------------------------------------------

export interface GroupSpec {
  bits: 4;
  /** Input columns per group; -1 = one group per row (per-channel). */
  groupSize: number;
  /** Symmetric: zero point fixed at 8. Otherwise min/max with a zero point per group. */
  sym: boolean;
}

export interface Int4Weight {
  out: number;
  in: number;
  groupSize: number;
  sym: boolean;
  /** [out, in], values 0..15 */
  q: Uint8Array;
  /** [groups, out] (AutoGPTQ's orientation), float16-exact */
  scales: Float32Array;
  /** [groups, out], values 0..15 (8 when symmetric) */
  zeros: Uint8Array;
  /** [in]: the group of each input column (not monotone after act-order) */
  gIdx: Int32Array;
}

export const MAXQ4 = 15;

export function numGroups(inn: number, groupSize: number): number {
  return groupSize > 0 ? Math.ceil(inn / groupSize) : 1;
}

/**
 * Scale and zero point of one group from its values (GPTQ's Quantizer.find_params): the range always
 * includes 0; symmetric ranges are ±absmax; an all-zero group gets the range [−1, 1].
 * With a zero point, z ≥ 1: AutoGPTQ's file format stores z − 1 in four bits, so z = 0 cannot be written.
 */
export function groupParams(values: ArrayLike<number>, sym: boolean, maxq = MAXQ4): { scale: number; zero: number } {
  let lo = 0, hi = 0;
  for (let i = 0; i < values.length; i++) {
    lo = Math.min(lo, values[i]!);
    hi = Math.max(hi, values[i]!);
  }
  if (sym) {
    hi = Math.max(-lo, hi);
    lo = -hi;
  }
  if (lo === 0 && hi === 0) {
    lo = -1;
    hi = 1;
  }
  const scale = toF16((hi - lo) / maxq);
  if (sym) return { scale, zero: (maxq + 1) / 2 };
  const zero = Math.min(maxq, rint(-lo / scale));
  // z = 0 (a group that is all but non-negative): shift to z = 1 and stretch the scale to still reach hi.
  return zero >= 1 ? { scale, zero } : { scale: toF16(Math.max(hi / (maxq - 1), -lo)), zero: 1 };
}

export function quantizeValue(w: number, scale: number, zero: number, maxq = MAXQ4): number {
  return Math.max(0, Math.min(maxq, rint(w / scale) + zero));
}

export function dequantizeValue(q: number, scale: number, zero: number): number {
  return Math.fround((q - zero) * scale);
}

/** Plain round-to-nearest, group by group (the baseline GPTQ and AWQ improve on). */
export function quantizeRtn(w: Float32Array | Float64Array, out: number, inn: number, spec: GroupSpec): Int4Weight {
  const groupSize = spec.groupSize > 0 ? spec.groupSize : inn;
  const G = numGroups(inn, groupSize);
  const q = new Uint8Array(out * inn), scales = new Float32Array(G * out), zeros = new Uint8Array(G * out);
  const gIdx = new Int32Array(inn);
  for (let c = 0; c < inn; c++) gIdx[c] = Math.floor(c / groupSize);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < G; g++) {
      const c0 = g * groupSize, c1 = Math.min(inn, c0 + groupSize);
      const { scale, zero } = groupParams(w.subarray(r * inn + c0, r * inn + c1), spec.sym);
      scales[g * out + r] = scale;
      zeros[g * out + r] = zero;
      for (let c = c0; c < c1; c++) q[r * inn + c] = quantizeValue(w[r * inn + c]!, scale, zero);
    }
  }
  return { out, in: inn, groupSize: spec.groupSize, sym: spec.sym, q, scales, zeros, gIdx };
}

/** [out, in] float weights of an int4 matrix: (q − z[g]) · s[g] with g = g_idx[column]. */
export function dequantizeInt4(x: Int4Weight): Float32Array {
  const w = new Float32Array(x.out * x.in);
  for (let r = 0; r < x.out; r++) {
    for (let c = 0; c < x.in; c++) {
      const g = x.gIdx[c]!;
      w[r * x.in + c] = dequantizeValue(x.q[r * x.in + c]!, x.scales[g * x.out + r]!, x.zeros[g * x.out + r]!);
    }
  }
  return w;
}

// ---------------------------------------------------------------------------------------------
// AutoGPTQ packing
// ---------------------------------------------------------------------------------------------

/**
 * qweight: int32 [ceil(in/8), out]; nibble k (bits 4k..4k+3) of word [i, j] is q of input row 8i+k, output j
 * (the transpose of our [out, in] q). Rows past `in` pad with 0.
 */
export function packQweight(q: Uint8Array, out: number, inn: number): Int32Array {
  const rows = Math.ceil(inn / 8);
  const packed = new Int32Array(rows * out);
  for (let c = 0; c < inn; c++) {
    const i = c >> 3, shift = (c & 7) * 4;
    for (let r = 0; r < out; r++) packed[i * out + r]! |= q[r * inn + c]! << shift;
  }
  return packed;
}

export function unpackQweight(packed: Int32Array, out: number, inn: number): Uint8Array {
  const q = new Uint8Array(out * inn);
  for (let c = 0; c < inn; c++) {
    const i = c >> 3, shift = (c & 7) * 4;
    for (let r = 0; r < out; r++) q[r * inn + c] = (packed[i * out + r]! >>> shift) & 15;
  }
  return q;
}

/** qzeros: int32 [groups, ceil(out/8)], nibble k of word [g, j] = zero[g, 8j+k] − 1 (AutoGPTQ's "v1" format). */
export function packQzeros(zeros: Uint8Array, groups: number, out: number): Int32Array {
  const cols = Math.ceil(out / 8);
  const packed = new Int32Array(groups * cols);
  for (let g = 0; g < groups; g++) {
    for (let r = 0; r < out; r++) packed[g * cols + (r >> 3)]! |= ((zeros[g * out + r]! - 1) & 15) << ((r & 7) * 4);
  }
  return packed;
}

export function unpackQzeros(packed: Int32Array, groups: number, out: number): Uint8Array {
  const cols = Math.ceil(out / 8);
  const zeros = new Uint8Array(groups * out);
  for (let g = 0; g < groups; g++) {
    for (let r = 0; r < out; r++) zeros[g * out + r] = ((packed[g * cols + (r >> 3)]! >>> ((r & 7) * 4)) & 15) + 1;
  }
  return zeros;
}
