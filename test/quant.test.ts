/**
 * Weight quantizers (src/quant/int.ts, gptq.ts, awq.ts): hand-computed int8/int4 values and error
 * bounds, AutoGPTQ packing against hand-packed words, the Cholesky factors against hand-solved 2×2
 * matrices, GPTQ = RTN when the inputs are uncorrelated and GPTQ < RTN when they are correlated, and
 * AWQ choosing α > 0 when one input channel is salient.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { awqSearch, outputError } from '../src/quant/awq.js';
import { cholesky, gptqQuantize, hessian, inverseCholeskyUpper } from '../src/quant/gptq.js';
import {
  dequantizeInt4, dequantizeInt8, packQweight, packQzeros, quantizeInt8, quantizeRtn, rint, toF16, unpackQweight, unpackQzeros,
} from '../src/quant/int.js';
import { packInt8, unpackInt8 } from '../src/quant/tensors.js';
import { Rng } from '../src/util/rng.js';

await initBackend('wasm');

function randn(rng: Rng, n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.nextNormal() * scale);
}

describe('round to nearest', () => {
  test('rint rounds halves to even like torch.round', () => {
    assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6].map(rint), [0, 2, 2, -0, -2, 2, -3]);
  });

  test('int8: row [0.5, -1.27, 0.254] → scale 1.27/127, q [50, -127, 25]', () => {
    const x = quantizeInt8(Float32Array.from([0.5, -1.27, 0.254, 0, 0, 0]), 2, 3);
    assert.deepEqual(Array.from(x.q), [50, -127, 25, 0, 0, 0]);
    assert.equal(x.scale[0], Math.fround(1.27 / 127));
    assert.equal(x.scale[1], 1); // an all-zero row keeps a harmless scale
  });

  test('int8 outlier columns (LLM.int8()): kept exactly, left out of the absmax, 0 in the integers', () => {
    // row 0: [0.5, 100, -1.27]; column 1 is an outlier feature → scale from |−1.27| only.
    const x = quantizeInt8(Float32Array.from([0.5, 100, -1.27, 1, -2, 0.254]), 2, 3, [1]);
    assert.deepEqual(Array.from(x.q), [50, 0, -127, 127, 0, 32]); // row 1: absmax of {1, 0.254} = 1
    assert.deepEqual(Array.from(x.outliers!.idx), [1]);
    assert.deepEqual(Array.from(x.outliers!.w), [100, -2]);
    const d = dequantizeInt8(x);
    assert.equal(d[1], 100);
    assert.equal(d[4], -2);
    assert.equal(d[0], Math.fround(50 * Math.fround(1.27 / 127)));
  });

  test('int8 error ≤ scale/2 per element on random weights', () => {
    const rng = new Rng(1);
    const w = randn(rng, 16 * 40);
    const x = quantizeInt8(w, 16, 40);
    const d = dequantizeInt8(x);
    for (let i = 0; i < w.length; i++) assert.ok(Math.abs(w[i]! - d[i]!) <= x.scale[Math.floor(i / 40)]! / 2 + 1e-7, `element ${i}`);
  });

  test('int4 symmetric: group [-1.5, 0.75, 0.2, 0] → scale f16(0.2), q [0, 12, 9, 8]', () => {
    const x = quantizeRtn(Float32Array.from([-1.5, 0.75, 0.2, 0]), 1, 4, { bits: 4, groupSize: 4, sym: true });
    assert.equal(x.scales[0], toF16(0.2));
    assert.equal(x.zeros[0], 8);
    assert.deepEqual(Array.from(x.q), [0, 12, 9, 8]);
    assert.deepEqual(Array.from(dequantizeInt4(x)), [-8, 4, 1, 0].map((k) => Math.fround(k * toF16(0.2))));
  });

  test('int4 with zero point: group [-0.3, 1.2] → scale f16(1.5/15), zero 3, q [0, 15]', () => {
    const x = quantizeRtn(Float32Array.from([-0.3, 1.2]), 1, 2, { bits: 4, groupSize: 2, sym: false });
    assert.equal(x.scales[0], toF16(0.1));
    assert.equal(x.zeros[0], 3);
    assert.deepEqual(Array.from(x.q), [0, 15]);
  });

  for (const [sym, groupSize] of [[true, 32], [false, 32], [true, 128], [false, -1]] as const) {
    test(`int4 ${sym ? 'sym' : 'asym'} g${groupSize}: error ≤ scale/2 (sym) or ≤ scale (asym clamp) per element`, () => {
      const rng = new Rng(2);
      const out = 8, inn = 96;
      const w = randn(rng, out * inn);
      const x = quantizeRtn(w, out, inn, { bits: 4, groupSize, sym });
      const d = dequantizeInt4(x);
      for (let r = 0; r < out; r++) {
        for (let c = 0; c < inn; c++) {
          const s = x.scales[x.gIdx[c]! * out + r]!;
          const err = Math.abs(w[r * inn + c]! - d[r * inn + c]!);
          // + 8·2⁻¹¹·s: the float16 scale can be short of (max − min)/15 by half an f16 ulp, ~7.5 times over at the range's end.
          assert.ok(err <= ((sym ? 0.5 : 1) + 8 * 2 ** -11) * s, `[${r},${c}] error ${err} vs scale ${s}`);
        }
      }
    });
  }
});

describe('AutoGPTQ packing', () => {
  test('qweight: eight input rows per int32 word, row 8i+k in bits 4k..4k+3', () => {
    // q is [out, in]: output 0 has 1..8 along the input, output 1 has 15,0,…,0,15.
    const q = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 0, 0, 0, 0, 0, 15]);
    const packed = packQweight(q, 2, 8);
    assert.deepEqual(Array.from(packed), [0x87654321 | 0, 0xf000000f | 0]); // [-2023406815, -268435441]
    assert.deepEqual(Array.from(unpackQweight(packed, 2, 8)), Array.from(q));
  });

  test('qweight pads a partial last word with zeros (in = 10)', () => {
    const q = Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1, 9, 10]);
    const packed = packQweight(q, 1, 10);
    assert.deepEqual(Array.from(packed), [0x11111111, 0xa9]);
    assert.deepEqual(Array.from(unpackQweight(packed, 1, 10)), Array.from(q));
  });

  test('qzeros store zero − 1: symmetric zeros (8) pack to 0x77777777 as in every sym GPTQ checkpoint', () => {
    const zeros = new Uint8Array(8).fill(8);
    assert.deepEqual(Array.from(packQzeros(zeros, 1, 8)), [2004318071]);
    const mixed = Uint8Array.from([1, 16, 2, 3, 4, 5, 6, 7, 8, 9]); // 16 is out of range: wraps like AutoGPTQ's
    assert.deepEqual(Array.from(unpackQzeros(packQzeros(mixed, 1, 10), 1, 10)), [1, 16, 2, 3, 4, 5, 6, 7, 8, 9].map((z) => ((z - 1) & 15) + 1));
  });

  test('int8 in memory: four signed bytes per word along the input, round trip exact', () => {
    const q = Int8Array.from([-128, -1, 0, 127, 5, -7]); // out 1, in 6
    const packed = packInt8(q, 1, 6);
    assert.deepEqual(Array.from(packed), [0x7f00ff80, 0xf905]);
    assert.deepEqual(Array.from(unpackInt8(packed, 1, 6)), Array.from(q));
  });
});

describe('GPTQ', () => {
  test('cholesky of [[4,2],[2,3]] is [[2,0],[1,√2]]', () => {
    const L = cholesky(Float64Array.from([4, 2, 2, 3]), 2);
    assert.deepEqual(Array.from(L).map((v) => +v.toFixed(12)), [2, 0, 1, +Math.SQRT2.toFixed(12)]);
  });

  test('upper Cholesky of H⁻¹ for H = [[4,2],[2,3]]: H⁻¹ = [[3,-2],[-2,4]]/8', () => {
    const U = inverseCholeskyUpper(Float64Array.from([4, 2, 2, 3]), 2);
    const u11 = Math.sqrt(3 / 8), u12 = -0.25 / u11, u22 = Math.sqrt(1 / 3);
    const expect = [u11, u12, 0, u22];
    Array.from(U).forEach((v, i) => assert.ok(Math.abs(v - expect[i]!) < 1e-12, `U[${i}] = ${v}, expected ${expect[i]}`));
  });

  test('rejects a matrix that is not positive definite', () => {
    assert.throws(() => cholesky(Float64Array.from([1, 2, 2, 1]), 2), /not positive definite/);
  });

  test('Hessian 2XᵀX/N by hand: X = [[1,2],[3,4]] → [[10,14],[14,20]]', () => {
    assert.deepEqual(Array.from(hessian(Float32Array.from([1, 2, 3, 4]), 2, 2)), [10, 14, 14, 20]);
  });

  test('uncorrelated inputs (diagonal H): no error feedback, GPTQ equals RTN exactly', () => {
    const rng = new Rng(3);
    const out = 6, inn = 64;
    const w = randn(rng, out * inn);
    const H = new Float64Array(inn * inn);
    for (let i = 0; i < inn; i++) H[i * inn + i] = 1 + i / 10;
    const spec = { bits: 4 as const, groupSize: 16, sym: false };
    const g = gptqQuantize(w, out, inn, H, { ...spec, dampPercent: 0.01, blockSize: 16, actOrder: false });
    const r = quantizeRtn(w, out, inn, spec);
    assert.deepEqual(Array.from(g.q), Array.from(r.q));
    assert.deepEqual(Array.from(g.scales), Array.from(r.scales));
  });

  // Correlated calibration inputs X = Z·M (a few strong shared directions): where GPTQ's error feedback pays.
  const correlated = (seed: number, N: number, inn: number) => {
    const rng = new Rng(seed);
    const k = 8;
    const z = randn(rng, N * k), m = randn(rng, k * inn), noise = randn(rng, N * inn, 0.1);
    const x = new Float32Array(N * inn);
    for (let t = 0; t < N; t++) for (let i = 0; i < inn; i++) {
      let s = noise[t * inn + i]!;
      for (let j = 0; j < k; j++) s += z[t * k + j]! * m[j * inn + i]!;
      x[t * inn + i] = s;
    }
    return x;
  };

  for (const actOrder of [false, true]) {
    test(`correlated inputs: GPTQ's output error is below RTN's at 4 bits, g32${actOrder ? ', act-order' : ''}`, () => {
      const N = 512, inn = 128, out = 32;
      const x = correlated(4, N, inn);
      const w = randn(new Rng(5), out * inn, 0.5);
      const spec = { bits: 4 as const, groupSize: 32, sym: true };
      const H = hessian(x, N, inn);
      const g = gptqQuantize(w, out, inn, H, { ...spec, dampPercent: 0.01, blockSize: 128, actOrder });
      const r = quantizeRtn(w, out, inn, spec);
      const X = tf.tensor2d(x, [N, inn]);
      const eG = outputError(X, w, dequantizeInt4(g), out);
      const eR = outputError(X, w, dequantizeInt4(r), out);
      X.dispose();
      assert.ok(eG < 0.5 * eR, `GPTQ ${eG} vs RTN ${eR}`);
      if (actOrder) assert.ok(new Set(g.gIdx).size === 4 && g.gIdx.some((v, i) => v !== Math.floor(i / 32)), 'act-order permutes g_idx');
    });
  }
});

describe('AWQ', () => {
  test('a salient input channel (50x the others) makes the search pick α > 0 and beat RTN (α = 0)', () => {
    const rng = new Rng(6);
    const N = 256, inn = 64, out = 16;
    const x = randn(rng, N * inn);
    for (let t = 0; t < N; t++) x[t * inn + 5]! *= 50;
    const w = randn(rng, out * inn);
    const X = tf.tensor2d(x, [N, inn]);
    const r = awqSearch(X, [{ w, out }], { bits: 4, groupSize: 32, sym: false });
    X.dispose();
    assert.ok(r.alpha > 0, `alpha ${r.alpha}, errors ${r.errors}`);
    assert.ok(r.errors[r.grid.indexOf(r.alpha)]! < 0.9 * r.errors[0]!, `best ${Math.min(...r.errors)} vs RTN ${r.errors[0]}`);
    assert.ok(r.scales[5]! > r.scales[0]!, 'the salient channel is scaled up');
  });

  test('without a salient channel (equal magnitudes) every α gives the same scales: α = 0 is kept', () => {
    const rng = new Rng(7);
    const N = 64, inn = 32;
    const x = new Float32Array(N * inn).map((_, i) => (i % 2 ? 1 : -1));
    const w = randn(rng, 4 * inn);
    const X = tf.tensor2d(x, [N, inn]);
    const r = awqSearch(X, [{ w, out: 4 }], { bits: 4, groupSize: 32, sym: true }, 5);
    X.dispose();
    assert.equal(r.alpha, 0);
    assert.ok(r.errors.every((e) => e === r.errors[0]), `${r.errors}`);
  });
});
