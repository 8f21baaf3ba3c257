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

/** tf.customGrad with typed positional arguments (its own typing is a loose rest parameter). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const customGrad = (f: (...args: any[]) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[] }) =>
  tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]);

/**
 * y = x @ W + b for x [N,in], W [in,out], b [out]. The bias gradient is ones[1,N] @ dy: a reduction over
 * rows (tf.sum axis 0) is ~15x slower than that matmul on WASM.
 */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
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

/** y = a @ b for a [M,K], b [K,N]. */
export function matmul(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
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

/** Batched y[n] = a[n] @ b[n] for a [N,M,K], b [N,K,P]. */
export function bmm(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  const f = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    save([a, b]);
    return {
      value: tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D),
      gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [
        tf.matMul(dy as tf.Tensor3D, tf.transpose(sb!, [0, 2, 1]) as tf.Tensor3D),
        tf.matMul(tf.transpose(sa!, [0, 2, 1]) as tf.Tensor3D, dy as tf.Tensor3D),
      ],
    };
  });
  return f(a, b) as tf.Tensor3D;
}

/**
 * Row lookup wte[ids] with a gradient that is a one-hot matmul (no UnsortedSegmentSum needed):
 * dW = onehot(ids)^T @ dy. The one-hot is built already transposed ([V, N]) to stay on the fast path.
 */
export function embedding(weight: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const vocab = weight.shape[0];
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
