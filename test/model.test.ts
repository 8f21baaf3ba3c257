/**
 * The shared transformer (src/model/gpt.ts) and its hand-written kernels (src/model/kernels.ts):
 * values against an independent float64 reference written here in plain JS, gradients against
 * central finite differences, KV-cache decoding against the full forward, causality, and tensor leaks.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import {
  type ModelConfig,
  type Params,
  disposeCache,
  emptyCache,
  forward,
  paramShapes,
  resolveModelConfig,
} from '../src/model/gpt.js';
import { bmm, embedding, linear, matmul, oneHotFloat } from '../src/model/kernels.js';
import { initParams } from '../src/model/init.js';
import { crossEntropy } from '../src/train/losses.js';
import { Rng } from '../src/util/rng.js';

await initBackend('wasm');

// ------------------------------------------------------------------------------------------ helpers

/** Tiny GPT-2: LayerNorm, GELU, learned positions, biases, tied embeddings. */
const GPT2 = resolveModelConfig({ arch: 'gpt2', vocab_size: 11, n_ctx: 12, n_layer: 2, n_embd: 8, n_head: 2, n_inner: 12 });
/** Tiny Llama: RMSNorm, SwiGLU, RoPE (head_dim 4), GQA (4 query heads over 2 kv heads), untied lm_head. */
const LLAMA = resolveModelConfig({
  arch: 'llama', vocab_size: 11, n_ctx: 12, n_layer: 2, n_embd: 16, n_head: 4, n_kv_head: 2, n_inner: 12, tie_embeddings: false,
});

/**
 * Random parameters with O(0.3) entries everywhere, norm gains around 1 and non-zero biases: unlike the
 * real init (std 0.02, gains 1, biases 0) this makes every term of the forward pass matter, so a wrong
 * bias, gain or head mapping changes the numbers visibly.
 */
function randomParams(c: ModelConfig, seed: number, std = 0.3): Record<string, Float32Array> {
  const rng = new Rng(seed);
  const out: Record<string, Float32Array> = {};
  for (const [name, shape] of Object.entries(paramShapes(c))) {
    const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
    const isGain = shape.length === 1 && !name.endsWith('.bias');
    for (let i = 0; i < a.length; i++) a[i] = (isGain ? 1 : 0) + rng.nextNormal() * std;
    out[name] = a;
  }
  return out;
}

function toTensors(c: ModelConfig, raw: Record<string, Float32Array>): Params {
  const shapes = paramShapes(c);
  return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, tf.tensor(v, shapes[k]!)]));
}

function dispose(p: Params): void {
  for (const t of Object.values(p)) t.dispose();
}

function randomTokens(rng: Rng, B: number, T: number, V: number): number[][] {
  return Array.from({ length: B }, () => Array.from({ length: T }, () => rng.nextInt(V)));
}

function logitsOf(p: Params, c: ModelConfig, tokens: number[][]): Float32Array {
  const input = tf.tensor2d(tokens, undefined, 'int32');
  const { logits } = forward(p, c, input);
  const out = logits.dataSync() as Float32Array;
  input.dispose();
  logits.dispose();
  return Float32Array.from(out);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// -------------------------------------------------------- independent float64 reference forward pass

/**
 * The forward pass written from the papers in plain JS float64, sharing nothing with gpt.ts but the
 * parameter names: LayerNorm (biased variance), GPT-2's tanh GELU, learned positions; RMSNorm,
 * SwiGLU, rotate-half RoPE (Hugging Face layout), GQA where query head h reads kv head floor(h/rep).
 * Linear weights are [in, out]. Returns logits [B][T][V].
 */
function referenceForward(c: ModelConfig, P: Record<string, Float32Array>, tokens: number[][]): number[][][] {
  const d = c.n_embd, hd = d / c.n_head, rep = c.n_head / c.n_kv_head, kvDim = c.n_kv_head * hd;
  const lin = (x: number[], name: string, nin: number, nout: number): number[] => {
    const W = P[`${name}.weight`]!, b = P[`${name}.bias`];
    const y = new Array<number>(nout).fill(0);
    for (let o = 0; o < nout; o++) {
      let s = b ? b[o]! : 0;
      for (let i = 0; i < nin; i++) s += x[i]! * W[i * nout + o]!;
      y[o] = s;
    }
    return y;
  };
  const norm = (x: number[], name: string): number[] => {
    const w = P[`${name}.weight`]!;
    if (c.arch === 'llama') {
      const ms = x.reduce((s, v) => s + v * v, 0) / x.length;
      return x.map((v, i) => (v / Math.sqrt(ms + c.norm_eps)) * w[i]!);
    }
    const b = P[`${name}.bias`]!;
    const mean = x.reduce((s, v) => s + v, 0) / x.length;
    const variance = x.reduce((s, v) => s + (v - mean) ** 2, 0) / x.length;
    return x.map((v, i) => ((v - mean) / Math.sqrt(variance + c.norm_eps)) * w[i]! + b[i]!);
  };
  const gelu = (u: number) => 0.5 * u * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (u + 0.044715 * u ** 3)));
  const silu = (u: number) => u / (1 + Math.exp(-u));
  const rope = (v: number[], heads: number, pos: number): number[] => {
    const out = v.slice(), half = hd / 2;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const angle = pos * Math.pow(c.rope_theta, (-2 * i) / hd);
        const x1 = v[h * hd + i]!, x2 = v[h * hd + half + i]!;
        out[h * hd + i] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
        out[h * hd + half + i] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
      }
    }
    return out;
  };
  return tokens.map((seq) => {
    let xs = seq.map((tok, t) => {
      const row = Array.from(P['wte.weight']!.subarray(tok * d, (tok + 1) * d));
      if (c.arch === 'gpt2') for (let i = 0; i < d; i++) row[i]! += P['wpe.weight']![t * d + i]!;
      return row;
    });
    for (let l = 0; l < c.n_layer; l++) {
      const a = `h.${l}.attn`;
      const hs = xs.map((x) => norm(x, `h.${l}.ln_1`));
      let q = hs.map((h) => lin(h, `${a}.q_proj`, d, d));
      let k = hs.map((h) => lin(h, `${a}.k_proj`, d, kvDim));
      const v = hs.map((h) => lin(h, `${a}.v_proj`, d, kvDim));
      if (c.arch === 'llama') {
        q = q.map((r, t) => rope(r, c.n_head, t));
        k = k.map((r, t) => rope(r, c.n_kv_head, t));
      }
      const ys = xs.map((_, t) => {
        const y = new Array<number>(d).fill(0);
        for (let h = 0; h < c.n_head; h++) {
          const kvh = Math.floor(h / rep);
          const scores: number[] = [];
          for (let s = 0; s <= t; s++) {
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[t]![h * hd + i]! * k[s]![kvh * hd + i]!;
            scores.push(dot / Math.sqrt(hd));
          }
          const mx = Math.max(...scores);
          const e = scores.map((z) => Math.exp(z - mx));
          const sum = e.reduce((x, z) => x + z, 0);
          for (let s = 0; s <= t; s++) for (let i = 0; i < hd; i++) y[h * hd + i]! += (e[s]! / sum) * v[s]![kvh * hd + i]!;
        }
        return lin(y, `${a}.o_proj`, d, d);
      });
      xs = xs.map((x, t) => x.map((val, i) => val + ys[t]![i]!));
      xs = xs.map((x) => {
        const h = norm(x, `h.${l}.ln_2`);
        const up = lin(h, `h.${l}.mlp.up_proj`, d, c.n_inner);
        const act = c.arch === 'llama'
          ? lin(h, `h.${l}.mlp.gate_proj`, d, c.n_inner).map((g, i) => silu(g) * up[i]!)
          : up.map(gelu);
        const down = lin(act, `h.${l}.mlp.down_proj`, c.n_inner, d);
        return x.map((val, i) => val + down[i]!);
      });
    }
    return xs.map((x) => {
      const h = norm(x, 'ln_f');
      const logits = new Array<number>(c.vocab_size).fill(0);
      for (let vId = 0; vId < c.vocab_size; vId++) {
        let s = 0;
        for (let i = 0; i < d; i++) {
          s += h[i]! * (c.tie_embeddings ? P['wte.weight']![vId * d + i]! : P['lm_head.weight']![i * c.vocab_size + vId]!);
        }
        logits[vId] = s;
      }
      return logits;
    });
  });
}

// ---------------------------------------------------------------------------------------------- tests

describe('forward matches an independent float64 implementation', () => {
  for (const [label, c] of [['gpt2', GPT2], ['llama (GQA, RoPE, untied head)', LLAMA]] as const) {
    test(label, () => {
      const raw = randomParams(c, 7);
      const p = toTensors(c, raw);
      const tokens = randomTokens(new Rng(3), 2, 9, c.vocab_size);
      const got = logitsOf(p, c, tokens);
      const want = referenceForward(c, raw, tokens).flat(2);
      // float32 vs float64 through 2 layers with O(1) activations: rounding is ~1e-6 relative, so
      // 1e-4 absolute on logits of magnitude ~1-10 leaves 10x margin yet catches any formula slip.
      assert.ok(maxAbsDiff(got, want) < 1e-4, `max |logit diff| ${maxAbsDiff(got, want)}`);
      // Sanity: the logits are not degenerate (a model that ignored its input would still "match" zeros).
      assert.ok(Math.max(...want.map(Math.abs)) > 1, "Math.max(...want.map(Math.abs)) > 1");
      dispose(p);
    });
  }

  test('zero-layer gpt2 is LayerNorm(wte[tok] + wpe[pos]) @ wteᵀ, computed by hand', () => {
    // vocab 2, d 2: wte = [[1,3],[2,-2]], wpe = [[0,1],[1,0]], ln_f gain [2, 0.5], bias [0.1, -0.1].
    // token 0 at pos 0: x = [1,4], mean 2.5, var 2.25, xhat = [-1,1]/sqrt(2.25+1e-5)
    //   ≈ [-0.99999778, 0.99999778]; h = [2·xhat0 + 0.1, 0.5·xhat1 - 0.1] = [-1.89999556, 0.39999889]
    //   logits = [h·wte0, h·wte1] = [-1.89999556 + 1.19999667, -3.79999111 - 0.79999778]
    //          = [-0.69999889, -4.59998889]
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 2, n_ctx: 2, n_layer: 0, n_embd: 2, n_head: 1 });
    const p: Params = {
      'wte.weight': tf.tensor2d([[1, 3], [2, -2]]),
      'wpe.weight': tf.tensor2d([[0, 1], [1, 0]]),
      'ln_f.weight': tf.tensor1d([2, 0.5]),
      'ln_f.bias': tf.tensor1d([0.1, -0.1]),
    };
    const got = logitsOf(p, c, [[0]]);
    const xh = 1.5 / Math.sqrt(2.25 + 1e-5);
    const h = [-2 * xh + 0.1, 0.5 * xh - 0.1];
    const want = [h[0]! * 1 + h[1]! * 3, h[0]! * 2 + h[1]! * -2];
    assert.ok(maxAbsDiff(want, [-0.69999889, -4.59998889]) < 1e-7, `the comment's arithmetic: ${want}`);
    // float32 rounding of O(1) numbers: 1e-6.
    assert.ok(maxAbsDiff(got, want) < 1e-6, `${Array.from(got)} vs ${want}`);
    dispose(p);
  });

  test('zero-layer llama is RMSNorm(wte[tok]) @ lm_head, computed by hand', () => {
    // wte row 1 = [3, 4]: mean square 12.5, rms = sqrt(12.5 + 1e-5) ≈ 3.53553529; gain [1, 2]
    //   h = [3/3.53553529, 8/3.53553529] = [0.84852780, 2.26274080]
    //   lm_head [d=2, V=2] = [[1, 0], [1, -1]] → logits = [h0 + h1, -h1] = [3.11126860, -2.26274080]
    const c = resolveModelConfig({ arch: 'llama', vocab_size: 2, n_ctx: 2, n_layer: 0, n_embd: 2, n_head: 1, tie_embeddings: false });
    const p: Params = {
      'wte.weight': tf.tensor2d([[0.5, 0.5], [3, 4]]),
      'ln_f.weight': tf.tensor1d([1, 2]),
      'lm_head.weight': tf.tensor2d([[1, 0], [1, -1]]),
    };
    const got = logitsOf(p, c, [[1]]);
    assert.ok(maxAbsDiff(got, [3.1112686, -2.2627408]) < 1e-6, `${Array.from(got)}`); // float32 rounding
    dispose(p);
  });
});

describe('custom kernels equal plain ops in value and gradient', () => {
  // Reference values and gradients are computed in plain JS float64 (a path that shares no tfjs code),
  // and the tfjs autodiff of the plain ops (tf.matMul / tf.add) is checked too. Inputs are O(1) with
  // inner dimensions ≤ 7, so float32 results carry ~1e-6 error: 1e-5 absolute is a safe bound.
  const TOL = 1e-5;
  const rng = new Rng(99);
  const rand = (n: number) => Array.from({ length: n }, () => rng.nextNormal());
  /** C[M,N] = A[M,K] @ B[K,N] in float64 on flat row-major arrays. */
  const mm = (A: number[], B: number[], M: number, K: number, N: number, tA = false, tB = false) => {
    const C = new Array<number>(M * N).fill(0);
    for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) {
      C[i * N + j]! += (tA ? A[k * M + i]! : A[i * K + k]!) * (tB ? B[j * K + k]! : B[k * N + j]!);
    }
    return C;
  };
  const close = (got: tf.Tensor, want: number[], what: string) => {
    const d = maxAbsDiff(got.dataSync(), want);
    assert.ok(d < TOL, `${what}: max abs diff ${d}`);
  };

  test('matmul: y = a @ b, da = dy @ bᵀ, db = aᵀ @ dy', () => {
    const M = 3, K = 5, N = 4;
    const a = rand(M * K), b = rand(K * N), R = rand(M * N); // loss = Σ y ⊙ R, so dy = R
    const A = tf.tensor2d(a, [M, K]), Bt = tf.tensor2d(b, [K, N]), Rt = tf.tensor2d(R, [M, N]);
    const mine = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(matmul(x as tf.Tensor2D, y as tf.Tensor2D), Rt)));
    const plain = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D), Rt)));
    close(matmul(A, Bt), mm(a, b, M, K, N), 'value');
    const [ga, gb] = mine([A, Bt]);
    close(ga!, mm(R, b, M, N, K, false, true), 'da');
    close(gb!, mm(a, R, K, M, N, true, false), 'db');
    const [pa, pb] = plain([A, Bt]);
    close(ga!, Array.from(pa!.dataSync()), 'da vs tf.matMul autodiff');
    close(gb!, Array.from(pb!.dataSync()), 'db vs tf.matMul autodiff');
  });

  test('bmm: batched matmul and its gradients per batch entry', () => {
    const Bn = 3, M = 2, K = 4, N = 3;
    const a = rand(Bn * M * K), b = rand(Bn * K * N), R = rand(Bn * M * N);
    const A = tf.tensor3d(a, [Bn, M, K]), Bt = tf.tensor3d(b, [Bn, K, N]), Rt = tf.tensor3d(R, [Bn, M, N]);
    const [ga, gb] = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(bmm(x as tf.Tensor3D, y as tf.Tensor3D), Rt)))([A, Bt]);
    const y = bmm(A, Bt);
    const wantY: number[] = [], wantA: number[] = [], wantB: number[] = [];
    for (let n = 0; n < Bn; n++) {
      const an = a.slice(n * M * K, (n + 1) * M * K), bn = b.slice(n * K * N, (n + 1) * K * N), rn = R.slice(n * M * N, (n + 1) * M * N);
      wantY.push(...mm(an, bn, M, K, N));
      wantA.push(...mm(rn, bn, M, N, K, false, true));
      wantB.push(...mm(an, rn, K, M, N, true, false));
    }
    close(y, wantY, 'value');
    close(ga!, wantA, 'da');
    close(gb!, wantB, 'db');
    const [pa, pb] = tf.grads((x: tf.Tensor, z: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x as tf.Tensor3D, z as tf.Tensor3D), Rt)))([A, Bt]);
    close(ga!, Array.from(pa!.dataSync()), 'da vs tf.matMul autodiff');
    close(gb!, Array.from(pb!.dataSync()), 'db vs tf.matMul autodiff');
  });

  test('linear with bias: y = x @ W + b; db is the column sum of dy', () => {
    const N = 5, I = 3, O = 4;
    const x = rand(N * I), w = rand(I * O), b = rand(O), R = rand(N * O);
    const X = tf.tensor2d(x, [N, I]), W = tf.tensor2d(w, [I, O]), Bv = tf.tensor1d(b), Rt = tf.tensor2d(R, [N, O]);
    const wantY = mm(x, w, N, I, O).map((v, i) => v + b[i % O]!);
    close(linear(X, W, Bv), wantY, 'value');
    const [gx, gw, gb] = tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) =>
      tf.sum(tf.mul(linear(p as tf.Tensor2D, q as tf.Tensor2D, r as tf.Tensor1D), Rt)))([X, W, Bv]);
    close(gx!, mm(R, w, N, O, I, false, true), 'dx');
    close(gw!, mm(x, R, I, N, O, true, false), 'dW');
    close(gb!, Array.from({ length: O }, (_, o) => R.filter((_, i) => i % O === o).reduce((s, v) => s + v, 0)), 'db');
    const [px, pw, pb] = tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) =>
      tf.sum(tf.mul(tf.add(tf.matMul(p as tf.Tensor2D, q as tf.Tensor2D), r), Rt)))([X, W, Bv]);
    close(gx!, Array.from(px!.dataSync()), 'dx vs autodiff');
    close(gw!, Array.from(pw!.dataSync()), 'dW vs autodiff');
    close(gb!, Array.from(pb!.dataSync()), 'db vs autodiff');
  });

  test('embedding: rows of W; dW scatter-adds dy into the looked-up rows (repeated ids accumulate)', () => {
    const V = 6, D = 3;
    const w = rand(V * D);
    const ids = [2, 0, 2, 5, 2]; // id 2 three times, ids 1, 3, 4 never
    const R = rand(ids.length * D);
    const W = tf.tensor2d(w, [V, D]), I = tf.tensor1d(ids, 'int32'), Rt = tf.tensor2d(R, [ids.length, D]);
    close(embedding(W, I), ids.flatMap((id) => w.slice(id * D, (id + 1) * D)), 'value');
    close(embedding(W, I), Array.from(tf.gather(W, I).dataSync()), 'value vs tf.gather');
    const [gw] = tf.grads((x: tf.Tensor) => tf.sum(tf.mul(embedding(x as tf.Tensor2D, I), Rt)))([W]);
    const want = new Array<number>(V * D).fill(0);
    ids.forEach((id, n) => { for (let j = 0; j < D; j++) want[id * D + j]! += R[n * D + j]!; });
    close(gw!, want, 'dW');
  });

  test('oneHotFloat reads back exact 0/1 floats (WASM float32 OneHot writes integer bits)', () => {
    const oh = oneHotFloat(tf.tensor1d([2, 0], 'int32'), 3);
    assert.equal(oh.dtype, 'float32');
    assert.deepEqual(Array.from(oh.dataSync()), [0, 0, 1, 1, 0, 0]);
  });
});

describe('finite-difference gradient check of the whole model', () => {
  /**
   * loss = crossEntropy(forward(params, tokens)) in float32. Central differences with eps = 1e-2 have
   * truncation error O(eps²·f''') ≈ 1e-4·|f'''| and rounding error ≈ 1e-7·|loss|/eps ≈ 3e-5. Both are far
   * below the gradients we compare (the coordinates are chosen among the larger ones), so we require
   * |analytic − numeric| ≤ 1e-2·max(|analytic|, |numeric|) + 2e-4 (the 2e-4 absorbs the rounding floor
   * for coordinates whose gradient is near zero).
   */
  const EPS = 1e-2, REL = 1e-2, ABS = 2e-4;

  for (const [label, c] of [['gpt2', GPT2], ['llama (GQA n_kv_head < n_head, RoPE)', LLAMA]] as const) {
    test(label, (t) => {
      const raw = randomParams(c, 11, 0.25);
      const shapes = paramShapes(c);
      const rng = new Rng(5);
      const tokens = randomTokens(rng, 2, 6, c.vocab_size);
      const input = tf.tensor2d(tokens.map((r) => r.slice(0, -1)), undefined, 'int32');
      const targets = tf.tensor1d(tokens.flatMap((r) => r.slice(1)), 'int32');
      const lossOf = (p: Params) => tf.tidy(() => {
        const { logits } = forward(p, c, input as tf.Tensor2D);
        return crossEntropy(tf.reshape(logits, [-1, c.vocab_size]) as tf.Tensor2D, targets);
      });

      const vars = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, tf.variable(tf.tensor(v, shapes[k]!), true, `fd_${label}_${k}`)]));
      const { value, grads } = tf.variableGrads(() => lossOf(vars as Params), Object.values(vars));
      const analytic: Record<string, Float32Array> = {};
      for (const [k, v] of Object.entries(vars)) analytic[k] = grads[v.name]!.dataSync() as Float32Array;
      assert.deepEqual(Object.keys(grads).length, Object.keys(shapes).length, 'every parameter gets a gradient');

      const base = toTensors(c, raw);
      let checked = 0, worst = 0;
      for (const [name, g] of Object.entries(analytic)) {
        // The 2 largest-|grad| coordinates plus 2 random ones per tensor.
        const order = Array.from(g.keys()).sort((i, j) => Math.abs(g[j]!) - Math.abs(g[i]!));
        const coords = new Set([order[0]!, order[1]!, rng.nextInt(g.length), rng.nextInt(g.length)]);
        // The key bias is the one exception: it adds q·b_k to every score of a query, and softmax is
        // shift-invariant, so its true gradient is exactly 0 (checked below against the numeric one).
        if (!name.endsWith('k_proj.bias')) assert.ok(Math.abs(g[order[0]!]!) > 1e-3, `${name}: all gradients ~0 (${g[order[0]!]})`);
        for (const i of coords) {
          const at = (delta: number) => {
            const data = Float32Array.from(raw[name]!);
            data[i]! += delta;
            const p = { ...base, [name]: tf.tensor(data, shapes[name]!) };
            const l = lossOf(p);
            const out = l.dataSync()[0]!;
            l.dispose();
            p[name]!.dispose();
            return out;
          };
          const numeric = (at(EPS) - at(-EPS)) / (2 * EPS);
          const a = g[i]!, err = Math.abs(a - numeric);
          if (Math.abs(a) > 1e-2) worst = Math.max(worst, err / Math.abs(a));
          assert.ok(err <= REL * Math.max(Math.abs(a), Math.abs(numeric)) + ABS, `${name}[${i}]: analytic ${a} vs numeric ${numeric}`);
          checked++;
        }
      }
      assert.ok(checked >= 3 * Object.keys(shapes).length, "checked >= 3 * Object.keys(shapes).length");
      assert.ok(Number.isFinite(value.dataSync()[0]!), "Number.isFinite(value.dataSync()[0]!)");
      value.dispose();
      for (const t of Object.values(grads)) t.dispose();
      for (const v of Object.values(vars)) v.dispose();
      dispose(base);
      input.dispose();
      targets.dispose();
      t.diagnostic(`${checked} coordinates, worst relative error where |grad| > 1e-2: ${worst.toExponential(2)}`);
    });
  }
});

describe('KV cache', () => {
  for (const [label, c] of [['gpt2', GPT2], ['llama', LLAMA]] as const) {
    test(`${label}: prefill 4 then one token at a time equals the full forward at every position`, () => {
      const raw = randomParams(c, 21);
      const p = toTensors(c, raw);
      const B = 2, T = 10, k = 4, V = c.vocab_size;
      const tokens = randomTokens(new Rng(8), B, T, V);
      const full = logitsOf(p, c, tokens); // [B, T, V]
      const before = tf.memory().numTensors;
      const cache = emptyCache(c);
      const steps: [number, number][] = [[0, k], ...Array.from({ length: T - k }, (_, i): [number, number] => [k + i, k + i + 1])];
      for (const [from, to] of steps) {
        const input = tf.tensor2d(tokens.map((r) => r.slice(from, to)), undefined, 'int32');
        const { logits } = forward(p, c, input, { cache });
        assert.equal(cache.length, to);
        const got = logits.dataSync();
        for (let b = 0; b < B; b++) {
          for (let t = from; t < to; t++) {
            const row = got.subarray((b * (to - from) + (t - from)) * V, (b * (to - from) + (t - from) + 1) * V);
            const want = full.subarray((b * T + t) * V, (b * T + t + 1) * V);
            // Same math in a different order (concat + masked columns): float32 reassociation only, ~1e-6.
            assert.ok(maxAbsDiff(row, want) < 1e-4, `b=${b} t=${t}: ${maxAbsDiff(row, want)}`);
          }
        }
        input.dispose();
        logits.dispose();
      }
      // The cache holds exactly one k and one v tensor per layer; disposing it frees everything.
      assert.equal(tf.memory().numTensors, before + 2 * c.n_layer);
      disposeCache(cache);
      assert.equal(tf.memory().numTensors, before);
      // Going past the context length is an error, not silent garbage.
      const tooLong = tf.tensor2d([Array(c.n_ctx + 1).fill(0)], undefined, 'int32');
      assert.throws(() => forward(p, c, tooLong), /exceeds the context length/);
      tooLong.dispose();
      dispose(p);
    });
  }
});

describe('causality and memory', () => {
  for (const [label, c] of [['gpt2', GPT2], ['llama', LLAMA]] as const) {
    test(`${label}: changing token 6 leaves the logits of positions 0..5 unchanged`, () => {
      const p = toTensors(c, randomParams(c, 31));
      const a = [[1, 2, 3, 4, 5, 6, 7, 8, 9]], b = [[1, 2, 3, 4, 5, 6, 0, 10, 9]];
      const la = logitsOf(p, c, a), lb = logitsOf(p, c, b);
      const V = c.vocab_size;
      // Masked scores are −1e9 → exp underflows to exactly 0, so earlier rows should not move at all;
      // 1e-6 allows for a backend that reorders sums.
      assert.ok(maxAbsDiff(la.subarray(0, 6 * V), lb.subarray(0, 6 * V)) < 1e-6, "maxAbsDiff(la.subarray(0, 6 * V), lb.subarray(0, 6 * V)) < 1e-6");
      // ...while the changed position and later ones do change (the test would be vacuous otherwise).
      assert.ok(maxAbsDiff(la.subarray(6 * V, 7 * V), lb.subarray(6 * V, 7 * V)) > 1e-2, "maxAbsDiff(la.subarray(6 * V, 7 * V), lb.subarray(6 * V, 7 * V)) > 1e-2");
      assert.ok(maxAbsDiff(la.subarray(7 * V), lb.subarray(7 * V)) > 1e-3, "maxAbsDiff(la.subarray(7 * V), lb.subarray(7 * V)) > 1e-3");
      dispose(p);
    });

    test(`${label}: forward and backward leak no tensors`, () => {
      const p = toTensors(c, randomParams(c, 41));
      const vars = Object.fromEntries(Object.entries(p).map(([k, t]) => [k, tf.variable(t, true, `leak_${label}_${k}`)]));
      const input = tf.tensor2d([[1, 2, 3, 4]], undefined, 'int32');
      const targets = tf.tensor1d([2, 3, 4, 5], 'int32');
      // Warm up once (tfjs may cache small constants on first use), then count.
      forward(p, c, input).logits.dispose();
      const before = tf.memory().numTensors;
      for (let i = 0; i < 3; i++) {
        const { logits, hidden } = forward(p, c, input, { returnHidden: true });
        assert.deepEqual(logits.shape, [1, 4, c.vocab_size]);
        assert.deepEqual(hidden!.shape, [1, 4, c.n_embd]);
        logits.dispose();
        hidden!.dispose();
      }
      assert.equal(tf.memory().numTensors, before, 'forward');
      for (let i = 0; i < 2; i++) {
        const { value, grads } = tf.variableGrads(() => tf.tidy(() => {
          const { logits } = forward(vars as Params, c, input, { training: true });
          return crossEntropy(tf.reshape(logits, [-1, c.vocab_size]) as tf.Tensor2D, targets);
        }), Object.values(vars));
        value.dispose();
        for (const g of Object.values(grads)) g.dispose();
      }
      assert.equal(tf.memory().numTensors, before, 'forward + backward');
      for (const v of Object.values(vars)) v.dispose();
      dispose(p);
      input.dispose();
      targets.dispose();
    });
  }

  test('initParams: GPT-2 init statistics (std 0.02, residual projections 0.02/sqrt(2L), gains 1, biases 0)', () => {
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 64, n_ctx: 16, n_layer: 2, n_embd: 64, n_head: 4 });
    const p = initParams(c, 1);
    const std = (t: tf.Tensor) => {
      const d = Array.from(t.dataSync());
      const m = d.reduce((s, v) => s + v, 0) / d.length;
      return Math.sqrt(d.reduce((s, v) => s + (v - m) ** 2, 0) / d.length);
    };
    // 4096-16384 samples: the sample std is within ~2% of the true one.
    assert.ok(Math.abs(std(p['wte.weight']!) - 0.02) < 0.002, "Math.abs(std(p['wte.weight']!) - 0.02) < 0.002");
    assert.ok(Math.abs(std(p['h.0.mlp.up_proj.weight']!) - 0.02) < 0.002, "Math.abs(std(p['h.0.mlp.up_proj.weight']!) - 0.02) < 0.002");
    assert.ok(Math.abs(std(p['h.1.attn.o_proj.weight']!) - 0.01) < 0.001, "Math.abs(std(p['h.1.attn.o_proj.weight']!) - 0.01) < 0.001"); // 0.02/sqrt(2·2)
    assert.ok(Math.abs(std(p['h.0.mlp.down_proj.weight']!) - 0.01) < 0.001, "Math.abs(std(p['h.0.mlp.down_proj.weight']!) - 0.01) < 0.001");
    assert.ok(p['h.0.ln_1.weight']!.dataSync().every((v) => v === 1), "p['h.0.ln_1.weight']!.dataSync().every((v) => v === 1)");
    assert.ok(p['h.0.attn.q_proj.bias']!.dataSync().every((v) => v === 0), "p['h.0.attn.q_proj.bias']!.dataSync().every((v) => v === 0)");
    // Same seed → same weights; different seed → different.
    const again = initParams(c, 1), other = initParams(c, 2);
    assert.equal(maxAbsDiff(p['wte.weight']!.dataSync(), again['wte.weight']!.dataSync()), 0);
    assert.ok(maxAbsDiff(p['wte.weight']!.dataSync(), other['wte.weight']!.dataSync()) > 0.01, "maxAbsDiff(p['wte.weight']!.dataSync(), other['wte.weight']!.dataSync()) > 0.01");
    dispose(p); dispose(again); dispose(other);
  });
});
