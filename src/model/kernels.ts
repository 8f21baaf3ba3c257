/**
 * Matrix kernels with hand-written gradients.
 *
 * Why: on the WASM backend (our CPU fallback) a plain 2-D matMul runs at ~10-20 GFLOP/s, but matMul with
 * transposeA/transposeB is 5-10x slower, and tfjs's built-in matMul gradient uses exactly those flags.
 * The gather gradient (UnsortedSegmentSum) has no WASM kernel at all. So every backward pass here
 * transposes explicitly (a cheap copy) and then calls the flag-free matMul. On the tensorflow backend
 * the same code is correct and about as fast.
 */
import * as tf from '@tensorflow/tfjs-core';
import { nativeKernels } from '../backend/native.js';
import type { ModelConfig, PagedAttention } from './gpt.js';

/**
 * Reference mode swaps every kernel below for the plain tfjs op with tfjs's own gradient. Benchmarks use
 * it to measure what the hand-written gradients buy; tests use it to check them.
 */
let reference = false;
export function setReferenceKernels(on: boolean): void {
  reference = on;
}

/**
 * Native kernels (src/backend/native.ts) are registered and on: tf.matMul takes transposed operands at
 * full speed there, so the gradients below pass transpose flags instead of copying; and the fused ops at
 * the end of this file exist.
 */
const native = (): boolean => nativeKernels() && !reference;

/** One tfjs kernel call by name (the fused native kernels have no tf.* op). */
const run = (name: string, inputs: Record<string, tf.Tensor>, attrs: Record<string, number | boolean | string> = {}) =>
  tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap);

/** tf.customGrad with typed positional arguments (its own typing is a loose rest parameter). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const customGrad = (f: (...args: any[]) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[] }) =>
  tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]);

/**
 * y = x @ W + b for x [N,in], W [in,out], b [out]. The bias gradient is ones[1,N] @ dy: a reduction over
 * rows (tf.sum axis 0) is ~15x slower than that matmul on WASM.
 */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  if (reference) return tf.add(tf.matMul(x, w), b);
  if (native()) {
    const g = customGrad((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
      save([x, w]);
      return {
        value: run('_FusedMatMul', { a: x, b: w, bias: b }, { transposeA: false, transposeB: false, activation: 'linear' }) as tf.Tensor2D,
        gradFunc: (dy: tf.Tensor, [sx, sw]: tf.Tensor[]) => [
          tf.matMul(dy as tf.Tensor2D, sw as tf.Tensor2D, false, true),
          tf.matMul(sx as tf.Tensor2D, dy as tf.Tensor2D, true, false),
          run('LlmctlColSum', { x: dy }) as tf.Tensor,
        ],
      };
    });
    return g(x, w, b) as tf.Tensor2D;
  }
  const f = customGrad((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, w]);
    return {
      value: tf.add(tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D), b),
      gradFunc: (dy: tf.Tensor, [sx, sw]: tf.Tensor[]) => [
        tf.matMul(dy as tf.Tensor2D, tf.transpose(sw!) as tf.Tensor2D),
        tf.matMul(tf.transpose(sx!) as tf.Tensor2D, dy as tf.Tensor2D),
        tf.reshape(tf.matMul(tf.ones([1, dy.shape[0]!]), dy as tf.Tensor2D), [dy.shape[1]!]),
      ],
    };
  });
  return f(x, w, b) as tf.Tensor2D;
}

/** y = a @ b for a [M,K], b [K,N]; with transposeB, y = a @ bᵀ for b [N,K] (the tied output head). */
export function matmul(a: tf.Tensor2D, b: tf.Tensor2D, transposeB = false): tf.Tensor2D {
  if (reference) return tf.matMul(a, b, false, transposeB);
  if (native()) {
    const g = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
      save([a, b]);
      return {
        value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, false, transposeB),
        gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
          tf.matMul(dy as tf.Tensor2D, sb as tf.Tensor2D, false, !transposeB),
          transposeB ? tf.matMul(dy as tf.Tensor2D, sa as tf.Tensor2D, true, false) : tf.matMul(sa as tf.Tensor2D, dy as tf.Tensor2D, true, false),
        ],
      };
    });
    return g(a, b) as tf.Tensor2D;
  }
  if (transposeB) return tf.tidy(() => matmul(a, tf.transpose(b) as tf.Tensor2D));
  const f = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([a, b]);
    return {
      value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
      gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
        tf.matMul(dy as tf.Tensor2D, tf.transpose(sb!) as tf.Tensor2D),
        tf.matMul(tf.transpose(sa!) as tf.Tensor2D, dy as tf.Tensor2D),
      ],
    };
  });
  return f(a, b) as tf.Tensor2D;
}

/**
 * y = a @ w where w receives no gradient (a frozen base weight under LoRA). customGrad computes every
 * input's gradient eagerly, so `matmul` would spend a second [in,N]@[N,out] matmul per layer on dW
 * that is then thrown away; here w is not a differentiable input and only da = dy @ wᵀ is computed.
 */
export function matmulFrozen(a: tf.Tensor2D, w: tf.Tensor2D, transposeW = false): tf.Tensor2D {
  if (reference) return tf.matMul(a, w, false, transposeW);
  if (native()) {
    const g = customGrad((a: tf.Tensor, save: tf.GradSaveFunc) => {
      save([w]);
      return {
        value: tf.matMul(a as tf.Tensor2D, w, false, transposeW),
        gradFunc: (dy: tf.Tensor, [sw]: tf.Tensor[]) => tf.matMul(dy as tf.Tensor2D, sw as tf.Tensor2D, false, !transposeW),
      };
    });
    return g(a) as tf.Tensor2D;
  }
  if (transposeW) return tf.tidy(() => matmulFrozen(a, tf.transpose(w) as tf.Tensor2D));
  const f = customGrad((a: tf.Tensor, save: tf.GradSaveFunc) => {
    save([w]); // w may be a scope-local tensor (the tied head's transpose): keep it for the backward pass
    return {
      value: tf.matMul(a as tf.Tensor2D, w),
      gradFunc: (dy: tf.Tensor, [sw]: tf.Tensor[]) => tf.matMul(dy as tf.Tensor2D, tf.transpose(sw!) as tf.Tensor2D),
    };
  });
  return f(a) as tf.Tensor2D;
}

/**
 * Inverted dropout (x · mask / (1 − rate)) with the mask drawn by an xorshift32 loop in JS. tf.dropout
 * draws through tfjs's randomUniform (one seedrandom call per element) plus floor/div kernels, which on
 * WASM cost LoRA ~20% of a step: LoRA drops out the input of every adapted projection.
 */
let dropoutState = (Math.floor(Math.random() * 0x7fffffff) | 1) >>> 0;
/** Restart the dropout mask stream (the trainer seeds it per micro-batch, so runs and resumes repeat). */
export function seedDropout(seed: number): void {
  dropoutState = seed >>> 0 || 1;
}
export function fastDropout<T extends tf.Tensor>(x: T, rate: number): T {
  if (rate <= 0) return x;
  const mask = new Float32Array(x.size);
  const scale = 1 / (1 - rate), threshold = (1 - rate) * 4294967296;
  let s = dropoutState;
  for (let i = 0; i < mask.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    mask[i] = s >>> 0 < threshold ? scale : 0;
  }
  dropoutState = s >>> 0 || 1;
  return tf.tidy(() => tf.mul(x, tf.tensor(mask, x.shape, 'float32'))) as T;
}

/**
 * The LoRA update scale·(x @ A) @ B for x [N,in], A [in,r], B [r,out], as one op. Its gradient only ever
 * transposes r-sized tensors: dA = (dhᵀ @ x)ᵀ instead of xᵀ @ dh, so no [N,in] activation is transposed,
 * and x is saved once (two chained `matmul`s would copy and transpose it for every adapted projection).
 */
export function loraDelta(x: tf.Tensor2D, A: tf.Tensor2D, B: tf.Tensor2D, scale: number): tf.Tensor2D {
  if (reference) return tf.mul(tf.matMul(tf.matMul(x, A), B), scale);
  if (native()) {
    const g = customGrad((x: tf.Tensor, A: tf.Tensor, B: tf.Tensor, save: tf.GradSaveFunc) => {
      const h = tf.matMul(x as tf.Tensor2D, A as tf.Tensor2D);
      save([x, A, B, h]);
      return {
        value: tf.mul(tf.matMul(h, B as tf.Tensor2D), scale),
        gradFunc: (dy: tf.Tensor, [sx, sA, sB, sh]: tf.Tensor[]) => {
          const gs = tf.mul(dy, scale) as tf.Tensor2D;
          const dh = tf.matMul(gs, sB as tf.Tensor2D, false, true);
          return [tf.matMul(dh, sA as tf.Tensor2D, false, true), tf.matMul(sx as tf.Tensor2D, dh, true, false), tf.matMul(sh as tf.Tensor2D, gs, true, false)];
        },
      };
    });
    return g(x, A, B) as tf.Tensor2D;
  }
  const f = customGrad((x: tf.Tensor, A: tf.Tensor, B: tf.Tensor, save: tf.GradSaveFunc) => {
    const h = tf.matMul(x as tf.Tensor2D, A as tf.Tensor2D); // [N, r]
    save([x, A, B, h]);
    return {
      value: tf.mul(tf.matMul(h, B as tf.Tensor2D), scale),
      gradFunc: (dy: tf.Tensor, [sx, sA, sB, sh]: tf.Tensor[]) => {
        const g = tf.mul(dy, scale) as tf.Tensor2D; // [N, out]
        const dh = tf.matMul(g, tf.transpose(sB!) as tf.Tensor2D); // [N, r]
        const dx = tf.matMul(dh, tf.transpose(sA!) as tf.Tensor2D); // [N, in]
        const dA = tf.transpose(tf.matMul(tf.transpose(dh) as tf.Tensor2D, sx as tf.Tensor2D)); // [in, r]
        const dB = tf.matMul(tf.transpose(sh!) as tf.Tensor2D, g); // [r, out]
        return [dx, dA, dB];
      },
    };
  });
  return f(x, A, B) as tf.Tensor2D;
}

/** Batched y[n] = a[n] @ b[n] for a [N,M,K], b [N,K,P]. */
export function bmm(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  if (reference) return tf.matMul(a, b);
  if (native()) {
    const g = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
      save([a, b]);
      return {
        value: tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D),
        gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
          tf.matMul(dy as tf.Tensor3D, sb as tf.Tensor3D, false, true),
          tf.matMul(sa as tf.Tensor3D, dy as tf.Tensor3D, true, false),
        ],
      };
    });
    return g(a, b) as tf.Tensor3D;
  }
  const f = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([a, b]);
    return {
      value: batchMatMul(a as tf.Tensor3D, b as tf.Tensor3D),
      gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
        batchMatMul(dy as tf.Tensor3D, tf.transpose(sb!, [0, 2, 1]) as tf.Tensor3D),
        batchMatMul(tf.transpose(sa!, [0, 2, 1]) as tf.Tensor3D, dy as tf.Tensor3D),
      ],
    };
  });
  return f(a, b) as tf.Tensor3D;
}

/**
 * WASM's BatchMatMul is a plain loop (~1.5 GFLOP/s) while its depthwise convolution is XNNPACK's grouped
 * GEMM. Written as a depthwise conv with one channel per batch entry, a batched matmul runs ~5x faster at
 * attention sizes (24×256×64×256: 155 ms → 31 ms): input [1, M, K, N], filter [1, K, N, P] (channel
 * multiplier P), 'valid' padding → [1, M, 1, N·P]. Other backends keep their own batched matmul.
 */
export function batchMatMul(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  if (tf.getBackend() !== 'wasm' || nativeKernels()) return tf.matMul(a, b);
  return tf.tidy(() => {
    const [N, M, K] = a.shape, P = b.shape[2];
    const x = tf.reshape(tf.transpose(a, [1, 2, 0]), [1, M, K, N]) as tf.Tensor4D;
    const filter = tf.reshape(tf.transpose(b, [1, 0, 2]), [1, K, N, P]) as tf.Tensor4D;
    const y = tf.depthwiseConv2d(x, filter, 1, 'valid');
    return tf.transpose(tf.reshape(y, [M, N, P]), [1, 0, 2]) as tf.Tensor3D;
  });
}

/**
 * Row lookup wte[ids] with a gradient that is a one-hot matmul (no UnsortedSegmentSum needed):
 * dW = onehot(ids)ᵀ @ dy, with the transpose explicit so the matmul stays on the fast path.
 */
export function embedding(weight: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const vocab = weight.shape[0];
  if (reference) return tf.matMul(oneHotFloat(ids, vocab), weight); // gather's own gradient has no WASM kernel
  const f = customGrad((w: tf.Tensor) => ({
    value: tf.gather(w, ids),
    gradFunc: (dy: tf.Tensor) => {
      const oneHotT = tf.transpose(oneHotFloat(ids, vocab)) as tf.Tensor2D; // [V, N]
      return tf.matMul(oneHotT, dy as tf.Tensor2D);
    },
  }));
  return f(weight) as tf.Tensor2D;
}

/**
 * One-hot rows as float32. Built as int32 and cast: WASM's OneHot kernel ignores a float32 dtype and
 * writes integer bits (1 reads back as 1.4e-45).
 */
export function oneHotFloat(ids: tf.Tensor1D, depth: number): tf.Tensor2D {
  return tf.tidy(() => tf.cast(tf.oneHot(ids, depth), 'float32') as tf.Tensor2D);
}

// ------------------------------------------------------------------ fused native ops
// Each is one native kernel forward and one backward (see native/llmctl_native.c), replacing 5-10 tfjs
// kernels. Callers use them only when nativeOps() is true; gpt.ts keeps the same math in tfjs ops.

/** The fused native ops below are available (native kernels on, not in reference mode). */
export function nativeOps(): boolean {
  return native();
}

/** LayerNorm over the last axis: (x − mean)/√(var + eps)·w + b. */
export function layerNorm(x: tf.Tensor2D, w: tf.Tensor, b: tf.Tensor, eps: number): tf.Tensor2D {
  const f = customGrad((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, mean, rstd] = run('LlmctlLayerNorm', { x, w, b }, { eps }) as tf.Tensor[];
    save([x, w, mean!, rstd!]);
    return { value: y!, gradFunc: (dy: tf.Tensor, [sx, sw, sm, sr]: tf.Tensor[]) => run('LlmctlLayerNormGrad', { dy, x: sx!, w: sw!, mean: sm!, rstd: sr! }) as tf.Tensor[] };
  });
  return f(x, w, b) as tf.Tensor2D;
}

/** RMSNorm over the last axis: x/√(mean(x²) + eps)·w. */
export function rmsNorm(x: tf.Tensor2D, w: tf.Tensor, eps: number): tf.Tensor2D {
  const f = customGrad((x: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, rstd] = run('LlmctlRmsNorm', { x, w }, { eps }) as tf.Tensor[];
    save([x, w, rstd!]);
    return { value: y!, gradFunc: (dy: tf.Tensor, [sx, sw, sr]: tf.Tensor[]) => run('LlmctlRmsNormGrad', { dy, x: sx!, w: sw!, rstd: sr! }) as tf.Tensor[] };
  });
  return f(x, w) as tf.Tensor2D;
}

/** GPT-2's tanh-approximation GELU. */
export function gelu(x: tf.Tensor): tf.Tensor {
  const f = customGrad((x: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x]);
    return { value: run('LlmctlGelu', { x }) as tf.Tensor, gradFunc: (dy: tf.Tensor, [sx]: tf.Tensor[]) => run('LlmctlGeluGrad', { dy, x: sx! }) as tf.Tensor };
  });
  return f(x);
}

/** SwiGLU: silu(gate)·up. */
export function swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  const f = customGrad((g: tf.Tensor, u: tf.Tensor, save: tf.GradSaveFunc) => {
    save([g, u]);
    return { value: run('LlmctlSwiGLU', { g, u }) as tf.Tensor, gradFunc: (dy: tf.Tensor, [sg, su]: tf.Tensor[]) => run('LlmctlSwiGLUGrad', { dy, g: sg!, u: su! }) as tf.Tensor[] };
  });
  return f(gate, up);
}

/** Rotary embedding ("rotate half") of x [B, T, heads, hd] at positions pos0..pos0+T−1. */
export function rope(x: tf.Tensor4D, pos0: number, theta: number): tf.Tensor4D {
  const f = customGrad((x: tf.Tensor) => ({
    value: run('LlmctlRope', { x }, { pos0, theta, inverse: false }) as tf.Tensor,
    gradFunc: (dy: tf.Tensor) => run('LlmctlRope', { x: dy }, { pos0, theta, inverse: true }) as tf.Tensor,
  }));
  return f(x) as tf.Tensor4D;
}

/**
 * Causal attention softmax(q·kᵀ·scale + mask)·v in one kernel, heads in the projections' layout:
 * q [B, T, H, hd]; k, v [B, S, KVH, hd] (grouped-query: head h reads kv head h / (H/KVH)), or a
 * preallocated cache [B, capacity, KVH, hd] whose first pos0 + T rows are filled. → y [B, T, H, hd].
 */
export function attention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, pos0: number, scale: number): tf.Tensor4D {
  const f = customGrad((q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, P] = run('LlmctlAttention', { q, k, v }, { pos0, scale }) as tf.Tensor[];
    save([q, k, v, P!]);
    return {
      value: y!,
      gradFunc: (dy: tf.Tensor, [sq, sk, sv, sP]: tf.Tensor[]) => {
        if (pos0 !== 0 || sk!.shape[1] !== sq!.shape[1]) throw new Error('attention: no gradient through a KV cache');
        return run('LlmctlAttentionGrad', { dy, q: sq!, k: sk!, v: sv!, P: sP! }, { scale }) as tf.Tensor[];
      },
    };
  });
  return f(q, k, v) as tf.Tensor4D;
}

/** The paged kernels' attributes: heads, RoPE, this layer's pools and the step's tables (typed arrays the addon reads in place). */
function pagedAttrs(layer: number, paged: PagedAttention, c: ModelConfig) {
  const { tables, positions } = paged;
  return { H: c.n_head, KVH: c.n_kv_head, theta: c.rope_theta, llama: c.arch === 'llama', kpool: tables.k[layer], vpool: tables.v[layer], pos: positions, base: tables.base, slots: tables.slots };
}

/**
 * Attention over the paged KV cache (inference only): q [N, H·hd], k/v [N, KVH·hd] straight from the
 * projections; RoPE (llama) at each token's position, the pool writes and the attention in one kernel.
 */
export function pagedAttention(q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, layer: number, paged: PagedAttention, c: ModelConfig): tf.Tensor2D {
  return tf.engine().runKernel('LlmctlPagedAttention', { q, k, v }, pagedAttrs(layer, paged, c) as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

/** A whole block (norms, projections, paged attention, MLP) over a serving step's tokens x [N, d]; weights named as BLOCK_WEIGHTS. */
export function pagedBlock(x: tf.Tensor2D, weights: Record<string, tf.Tensor>, layer: number, paged: PagedAttention, c: ModelConfig): tf.Tensor2D {
  const attrs = { ...pagedAttrs(layer, paged, c), inner: c.n_inner, eps: c.norm_eps };
  return tf.engine().runKernel('LlmctlPagedBlock', { x, ...weights }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}
