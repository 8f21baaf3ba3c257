/**
 * Native CPU kernels for the WASM backend (native/llmctl_native.c, built at install by node-gyp).
 *
 * tfjs's WASM backend keeps every tensor in one heap (an ArrayBuffer); the addon's functions take that
 * buffer and byte offsets, so a kernel here is: allocate outputs with backend.makeOutput, read the
 * offsets, call the addon. Registered over tfjs's own BatchMatMul and _FusedMatMul (every tf.matMul in
 * the code base runs native, transposed operands included, on 2 threads) and as new kernels for the fused
 * ops kernels.ts uses (norms, GELU, SwiGLU, attention, RoPE, AdamW).
 *
 * The WASM kernels stay the fallback: when the addon was not built (no compiler at install), fails to
 * load, or LLMCTL_NATIVE=0, nothing is registered and the code runs exactly as before. LLMCTL_THREADS
 * sets the thread count (default: 2, or 1 on a 1-core machine). setNativeKernels(false) switches back
 * at run time (tests compare both paths in one process).
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The addon's functions (see native/llmctl_native.c for each argument list). */
export interface NativeAddon {
  gemm(heap: ArrayBuffer, a: number, b: number, c: number, bias: number, batch: number, M: number, N: number, K: number, ta: number, tb: number, sa: number, sb: number, sc: number, beta: number): void;
  layernorm(heap: ArrayBuffer, x: number, w: number, b: number, y: number, mean: number, rstd: number, rows: number, D: number, eps: number): void;
  layernormGrad(heap: ArrayBuffer, dy: number, x: number, w: number, mean: number, rstd: number, dx: number, dw: number, db: number, rows: number, D: number): void;
  rmsnorm(heap: ArrayBuffer, x: number, w: number, y: number, rstd: number, rows: number, D: number, eps: number): void;
  rmsnormGrad(heap: ArrayBuffer, dy: number, x: number, w: number, rstd: number, dx: number, dw: number, rows: number, D: number): void;
  gelu(heap: ArrayBuffer, x: number, y: number, n: number): void;
  geluGrad(heap: ArrayBuffer, dy: number, x: number, dx: number, n: number): void;
  swiglu(heap: ArrayBuffer, g: number, u: number, y: number, n: number): void;
  swigluGrad(heap: ArrayBuffer, dy: number, g: number, u: number, dg: number, du: number, n: number): void;
  adamw(heap: ArrayBuffer, p: number, g: number, m: number, v: number, po: number, mo: number, vo: number, n: number, lr: number, b1: number, b2: number, eps: number, decay: number, bc1: number, bc2: number, gscale: number): void;
  sumSquares(heap: ArrayBuffer, x: number, n: number): number;
  copy(heap: ArrayBuffer, src: number, dst: number, n: number): void;
  colsum(heap: ArrayBuffer, x: number, out: number, rows: number, N: number): void;
  rope(heap: ArrayBuffer, x: number, y: number, B: number, T: number, heads: number, hd: number, pos0: number, theta: number, inverse: number): void;
  attention(heap: ArrayBuffer, ...args: number[]): void;
  attentionGrad(heap: ArrayBuffer, ...args: number[]): void;
  block(heap: ArrayBuffer, ...args: number[]): void;
  pagedBlock(heap: ArrayBuffer, ...args: (number | Float32Array | Int32Array)[]): void;
  pagedAttention(heap: ArrayBuffer, ...args: (number | Float32Array | Int32Array)[]): void;
  setThreads(n: number): void;
  info(): { isa: string; threads: number };
  forceIsa(level: number): void;
}

interface WasmData { memoryOffset: number }
interface WasmBackend {
  dataIdMap: { get(id: object): WasmData };
  wasm: { HEAPU8: Uint8Array };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  incRef(dataId: object): void;
  disposeData(dataId: object): boolean;
}

let addon: NativeAddon | undefined;
let loadError = '';
let registered = false;
let enabled = false;

/** Where node-gyp puts the addon, from src/backend (tsx) or dist/backend (built). */
function addonPath(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'llmctl_native.node');
}

/** Load the addon once; undefined (with the reason in nativeStatus()) when it is absent or disabled. */
export function loadNative(): NativeAddon | undefined {
  if (addon || loadError) return addon;
  if (process.env.LLMCTL_NATIVE === '0') {
    loadError = 'disabled by LLMCTL_NATIVE=0';
    return undefined;
  }
  const path = addonPath();
  if (!existsSync(path)) {
    loadError = 'addon not built (npm ci builds it with node-gyp when a C compiler is present)';
    return undefined;
  }
  try {
    addon = createRequire(import.meta.url)(path) as NativeAddon;
    const want = Number(process.env.LLMCTL_THREADS ?? Math.min(2, availableParallelism()));
    addon.setThreads(Number.isFinite(want) && want >= 1 ? Math.floor(want) : 1);
  } catch (err) {
    loadError = (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
    addon = undefined;
  }
  return addon;
}

/** True when the native kernels are registered and switched on (tfjs backend wasm). */
export function nativeKernels(): boolean {
  return enabled && registered;
}

export function nativeAddon(): NativeAddon | undefined {
  return nativeKernels() ? addon : undefined;
}

/** Switch the native kernels off (the WASM ones run) or back on; returns the previous state. */
export function setNativeKernels(on: boolean): boolean {
  const was = enabled;
  enabled = on && registered;
  return was;
}

/** Threads the native kernels use from now on (benchmarks compare 1 and 2). */
export function setNativeThreads(n: number): void {
  addon?.setThreads(Math.max(1, Math.floor(n)));
}

/** One line for logs: which kernels run. */
export function nativeStatus(): string {
  if (nativeKernels() && addon) {
    const { isa, threads } = addon.info();
    return `native kernels (${isa}, ${threads} thread${threads > 1 ? 's' : ''})`;
  }
  if (registered) return 'native kernels switched off';
  return `wasm kernels (${loadError || 'native addon not loaded'})`;
}

// ------------------------------------------------------------------ kernel plumbing

const F32 = 'float32' as const;
type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

const off = (be: WasmBackend, t: tf.TensorInfo): number => be.dataIdMap.get(t.dataId).memoryOffset;
const heap = (be: WasmBackend): ArrayBuffer => be.wasm.HEAPU8.buffer as ArrayBuffer;
const size = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

function register(name: string, fn: (be: WasmBackend, inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap) => tf.TensorInfo | tf.TensorInfo[]): void {
  if (tf.getKernel(name, 'wasm')) tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc: (({ inputs, backend, attrs }: KernelArgs) => fn(backend as WasmBackend, inputs, attrs ?? {})) as unknown as tf.KernelFunc });
}

/** Wrap one of tfjs's own WASM kernels: ours when it applies and native is on, the original otherwise. */
function override(name: string, fast: (be: WasmBackend, inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap) => tf.TensorInfo | undefined): void {
  const original = tf.getKernel(name, 'wasm');
  if (!original) return;
  tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({
    ...original,
    setupFunc: undefined, // already ran when the backend started
    kernelFunc: ((args: KernelArgs) => (enabled && fast(args.backend as WasmBackend, args.inputs, args.attrs ?? {})) || original.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0])) as unknown as tf.KernelFunc,
  });
}

/** y = op(a) @ op(b) (+ bias), with tfjs's broadcasting of the batch dimensions when one side has 1. */
function matmul(be: WasmBackend, a: tf.TensorInfo, b: tf.TensorInfo, ta: boolean, tb: boolean, bias?: tf.TensorInfo): tf.TensorInfo | undefined {
  if (a.dtype !== F32 || b.dtype !== F32 || (bias && bias.dtype !== F32)) return undefined;
  const ra = a.shape.length, rb = b.shape.length;
  if (ra < 2 || rb < 2) return undefined;
  const M = ta ? a.shape[ra - 1]! : a.shape[ra - 2]!, K = ta ? a.shape[ra - 2]! : a.shape[ra - 1]!;
  const N = tb ? b.shape[rb - 2]! : b.shape[rb - 1]!, Kb = tb ? b.shape[rb - 1]! : b.shape[rb - 2]!;
  if (K !== Kb) return undefined; // let tfjs report the shape error
  const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
  const batchA = size(outerA), batchB = size(outerB);
  let outer: number[];
  if (batchA === batchB && outerA.length === outerB.length && outerA.every((d, i) => d === outerB[i])) outer = outerA;
  else if (batchB === 1) outer = outerA.length >= outerB.length ? outerA : [...outerB.slice(0, outerB.length - outerA.length), ...outerA];
  else if (batchA === 1) outer = outerB.length >= outerA.length ? outerB : [...outerA.slice(0, outerA.length - outerB.length), ...outerB];
  else return undefined;
  if (bias && !(bias.shape.length === 1 && bias.shape[0] === N)) return undefined;
  const batch = Math.max(batchA, batchB);
  const out = be.makeOutput([...outer, M, N], F32);
  addon!.gemm(heap(be), off(be, a), off(be, b), off(be, out), bias ? off(be, bias) : -1, batch, M, N, K, ta ? 1 : 0, tb ? 1 : 0,
    batchA === 1 ? 0 : M * K, batchB === 1 ? 0 : K * N, M * N, 0);
  return out;
}

function registerAll(): void {
  // tf.clone, and so every tensor a custom gradient saves, runs Identity, which on WASM copies the data (~150
  // copies per training step). Tensors are immutable, so a clone can share the data, as Reshape does.
  override('Identity', (be, { x }) => {
    if (x!.dtype === 'string') return undefined;
    be.incRef(x!.dataId);
    return { dataId: x!.dataId, shape: x!.shape, dtype: x!.dtype };
  });
  // Row gathers (embeddings, wpe rows, the sampled logits rows): tfjs's WASM Gather computes an N-D index per
  // element; a slice of rows is a run of contiguous copies.
  override('GatherV2', (be, { x, indices }, { axis, batchDims }) => {
    if ((batchDims as number) || indices!.dtype !== 'int32' || (x!.dtype !== F32 && x!.dtype !== 'int32')) return undefined;
    const rank = x!.shape.length, ax = (axis as number) < 0 ? (axis as number) + rank : (axis as number);
    const dim = x!.shape[ax]!, outer = size(x!.shape.slice(0, ax)), inner = size(x!.shape.slice(ax + 1)), n = size(indices!.shape);
    const out = be.makeOutput([...x!.shape.slice(0, ax), ...indices!.shape, ...x!.shape.slice(ax + 1)], x!.dtype);
    const mem = new Int32Array(heap(be)); // after makeOutput: it may grow the heap
    const idx = mem.subarray(off(be, indices!) / 4, off(be, indices!) / 4 + n);
    if (idx.some((i) => i < 0 || i >= dim)) {
      be.disposeData(out.dataId);
      return undefined; // tfjs's kernel names the bad index
    }
    const src = off(be, x!) / 4, dst = off(be, out) / 4;
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < n; j++) mem.copyWithin(dst + (o * n + j) * inner, src + (o * dim + idx[j]!) * inner, src + (o * dim + idx[j]!) * inner + inner);
    }
    return out;
  });
  override('BatchMatMul', (be, { a, b }, attrs) => matmul(be, a!, b!, Boolean(attrs.transposeA), Boolean(attrs.transposeB)));
  override('_FusedMatMul', (be, { a, b, bias, preluActivationWeights }, attrs) =>
    attrs.activation === 'linear' && !preluActivationWeights ? matmul(be, a!, b!, Boolean(attrs.transposeA), Boolean(attrs.transposeB), bias) : undefined);

  // x [rows, D] → y, mean [rows], rstd [rows]
  register('LlmctlLayerNorm', (be, { x, w, b }, { eps }) => {
    const D = x!.shape[x!.shape.length - 1]!, rows = size(x!.shape) / D;
    const y = be.makeOutput(x!.shape, F32), mean = be.makeOutput([rows], F32), rstd = be.makeOutput([rows], F32);
    addon!.layernorm(heap(be), off(be, x!), off(be, w!), off(be, b!), off(be, y), off(be, mean), off(be, rstd), rows, D, eps as number);
    return [y, mean, rstd];
  });
  register('LlmctlLayerNormGrad', (be, { dy, x, w, mean, rstd }) => {
    const D = x!.shape[x!.shape.length - 1]!, rows = size(x!.shape) / D;
    const dx = be.makeOutput(x!.shape, F32), dw = be.makeOutput([D], F32), db = be.makeOutput([D], F32);
    addon!.layernormGrad(heap(be), off(be, dy!), off(be, x!), off(be, w!), off(be, mean!), off(be, rstd!), off(be, dx), off(be, dw), off(be, db), rows, D);
    return [dx, dw, db];
  });
  register('LlmctlRmsNorm', (be, { x, w }, { eps }) => {
    const D = x!.shape[x!.shape.length - 1]!, rows = size(x!.shape) / D;
    const y = be.makeOutput(x!.shape, F32), rstd = be.makeOutput([rows], F32);
    addon!.rmsnorm(heap(be), off(be, x!), off(be, w!), off(be, y), off(be, rstd), rows, D, eps as number);
    return [y, rstd];
  });
  register('LlmctlRmsNormGrad', (be, { dy, x, w, rstd }) => {
    const D = x!.shape[x!.shape.length - 1]!, rows = size(x!.shape) / D;
    const dx = be.makeOutput(x!.shape, F32), dw = be.makeOutput([D], F32);
    addon!.rmsnormGrad(heap(be), off(be, dy!), off(be, x!), off(be, w!), off(be, rstd!), off(be, dx), off(be, dw), rows, D);
    return [dx, dw];
  });
  register('LlmctlGelu', (be, { x }) => {
    const y = be.makeOutput(x!.shape, F32);
    addon!.gelu(heap(be), off(be, x!), off(be, y), size(x!.shape));
    return y;
  });
  register('LlmctlGeluGrad', (be, { dy, x }) => {
    const dx = be.makeOutput(x!.shape, F32);
    addon!.geluGrad(heap(be), off(be, dy!), off(be, x!), off(be, dx), size(x!.shape));
    return dx;
  });
  register('LlmctlSwiGLU', (be, { g, u }) => {
    const y = be.makeOutput(g!.shape, F32);
    addon!.swiglu(heap(be), off(be, g!), off(be, u!), off(be, y), size(g!.shape));
    return y;
  });
  register('LlmctlSwiGLUGrad', (be, { dy, g, u }) => {
    const dg = be.makeOutput(g!.shape, F32), du = be.makeOutput(g!.shape, F32);
    addon!.swigluGrad(heap(be), off(be, dy!), off(be, g!), off(be, u!), off(be, dg), off(be, du), size(g!.shape));
    return [dg, du];
  });
  // x [rows, N] → Σ over rows [N]
  register('LlmctlColSum', (be, { x }) => {
    const N = x!.shape[x!.shape.length - 1]!;
    const out = be.makeOutput([N], F32);
    addon!.colsum(heap(be), off(be, x!), off(be, out), size(x!.shape) / N, N);
    return out;
  });
  // x [B, T, heads, hd] rotated at positions pos0..; inverse rotates back (the gradient)
  register('LlmctlRope', (be, { x }, { pos0, theta, inverse }) => {
    const [B, T, H, hd] = x!.shape as [number, number, number, number];
    const y = be.makeOutput(x!.shape, F32);
    addon!.rope(heap(be), off(be, x!), off(be, y), B, T, H, hd, pos0 as number, theta as number, inverse ? 1 : 0);
    return y;
  });
  register('LlmctlAdamW', (be, { p, g, m, v }, attrs) => {
    const n = size(p!.shape);
    const po = be.makeOutput(p!.shape, F32), mo = be.makeOutput(p!.shape, F32), vo = be.makeOutput(p!.shape, F32);
    const { lr, beta1, beta2, eps, decay, bc1, bc2, gscale } = attrs as Record<string, number>;
    addon!.adamw(heap(be), off(be, p!), off(be, g!), off(be, m!), off(be, v!), off(be, po), off(be, mo), off(be, vo), n, lr!, beta1!, beta2!, eps!, decay!, bc1!, bc2!, gscale!);
    return [po, mo, vo];
  });
  // Causal attention: q [B,T,H,hd]; k, v either [B,T,KVH,hd] or a cache [B,cap,KVH,hd] holding S = pos0+T rows.
  register('LlmctlAttention', (be, { q, k, v }, { pos0, scale }) => {
    const [B, T, H, hd] = q!.shape as [number, number, number, number];
    const [, cap, KVH] = k!.shape as [number, number, number, number];
    const S = (pos0 as number) + T;
    const y = be.makeOutput(q!.shape, F32), P = be.makeOutput([B, H, T, S], F32);
    addon!.attention(heap(be), ...attnArgs(be, q!, k!, v!, y, P, B, H, KVH, T, S, cap, hd, pos0 as number, scale as number));
    return [y, P];
  });
  // One whole transformer block for inference with a KV cache (see block_fwd in the C source): x [N, d] → [N, d].
  // Inputs named after the weights; absent biases / gate are simply not passed.
  register('LlmctlBlock', (be, inputs, attrs) => {
    const { x, kcache, vcache } = inputs;
    const [B, cap, KVH, hd] = kcache!.shape as [number, number, number, number];
    const { T, H, inner, pos0, eps, theta, llama } = attrs as Record<string, number>;
    const out = be.makeOutput(x!.shape, F32);
    const w = BLOCK_WEIGHTS.map((k) => (inputs[k] ? off(be, inputs[k]!) : -1));
    addon!.block(heap(be), off(be, x!), off(be, out), ...w, off(be, kcache!), off(be, vcache!), B, T!, x!.shape[1]!, H!, KVH, hd, inner!, cap, pos0!, eps!, theta!, llama ? 1 : 0);
    return out;
  });
  // The same block over a serving step's N tokens with the paged KV cache: pools and tables are typed arrays
  // outside the heap, passed as attributes (see PagedTables in src/model/gpt.ts).
  register('LlmctlPagedBlock', (be, inputs, attrs) => {
    const { x } = inputs;
    const [N, d] = x!.shape as [number, number];
    const a = attrs as unknown as PagedAttrs & { inner: number; eps: number };
    const out = be.makeOutput(x!.shape, F32);
    const w = BLOCK_WEIGHTS.map((k) => (inputs[k] ? off(be, inputs[k]!) : -1));
    addon!.pagedBlock(heap(be), off(be, x!), off(be, out), ...w, a.kpool, a.vpool, a.pos, a.base, a.slots, N, d, a.H, a.KVH, d / a.H, a.inner, a.eps, a.theta, a.llama ? 1 : 0);
    return out;
  });
  // q [N, H·hd], k/v [N, KVH·hd] from the projections → y [N, H·hd]
  register('LlmctlPagedAttention', (be, { q, k, v }, attrs) => {
    const a = attrs as unknown as PagedAttrs;
    const [N, qd] = q!.shape as [number, number];
    const y = be.makeOutput(q!.shape, F32);
    addon!.pagedAttention(heap(be), off(be, q!), off(be, k!), off(be, v!), off(be, y), a.kpool, a.vpool, a.pos, a.base, a.slots, N, a.H, a.KVH, qd / a.H, a.theta, a.llama ? 1 : 0);
    return y;
  });
  register('LlmctlAttentionGrad', (be, { dy, q, k, v, P }, { scale }) => {
    const [B, T, H, hd] = q!.shape as [number, number, number, number];
    const [, S, KVH] = k!.shape as [number, number, number, number];
    const dq = be.makeOutput(q!.shape, F32), dk = be.makeOutput(k!.shape, F32), dv = be.makeOutput(v!.shape, F32);
    const args = attnArgs(be, q!, k!, v!, dy!, P!, B, H, KVH, T, S, S, hd, 0, scale as number);
    addon!.attentionGrad(heap(be), ...args, off(be, dy!), off(be, dq), off(be, dk), off(be, dv));
    return [dq, dk, dv];
  });
}

/** Attributes of the paged kernels: heads, RoPE, and the pool + tables of one layer. */
interface PagedAttrs {
  H: number;
  KVH: number;
  theta: number;
  llama: boolean;
  kpool: Float32Array;
  vpool: Float32Array;
  pos: Int32Array;
  base: Int32Array;
  slots: Int32Array;
}

/** The block kernel's weight inputs, in the order native/llmctl_native.c reads them. */
export const BLOCK_WEIGHTS = ['ln1w', 'ln1b', 'wq', 'bq', 'wk', 'bk', 'wv', 'bv', 'wo', 'bo', 'ln2w', 'ln2b', 'wg', 'bg', 'wu', 'bu', 'wd', 'bd'] as const;

function attnArgs(be: WasmBackend, q: tf.TensorInfo, k: tf.TensorInfo, v: tf.TensorInfo, y: tf.TensorInfo, P: tf.TensorInfo, B: number, H: number, KVH: number, T: number, S: number, cap: number, hd: number, pos0: number, scale: number): number[] {
  return [off(be, q), off(be, k), off(be, v), off(be, y), off(be, P), B, H, KVH, T, S, hd, pos0, scale,
    T * H * hd, hd, H * hd, // q: batch, head, row strides
    cap * KVH * hd, hd, KVH * hd, // k
    cap * KVH * hd, hd, KVH * hd, // v
    T * H * hd, hd, H * hd]; // y
}

/**
 * Register the native kernels on the WASM backend (call once tfjs runs on 'wasm'). Returns false, with the
 * reason in nativeStatus(), when the addon is unavailable.
 */
export function enableNativeKernels(): boolean {
  if (registered) {
    enabled = true;
    return true;
  }
  if (tf.getBackend() !== 'wasm' || !loadNative()) return false;
  if (!(heap(tf.backend() as unknown as WasmBackend) instanceof ArrayBuffer)) {
    loadError = 'the WASM heap is a SharedArrayBuffer (threaded WASM build); the addon reads plain ArrayBuffers';
    return false;
  }
  registerAll();
  registered = true;
  enabled = true;
  return true;
}

/**
 * Write rows into a preallocated cache tensor in place: src [B, T, ...] into dst [B, cap, ...] at row pos0.
 * The cache is owned by one generation and never shared, so writing its heap memory is safe.
 */
export function writeRows(dst: tf.Tensor, src: tf.Tensor, pos0: number): void {
  const be = tf.backend() as unknown as WasmBackend;
  const [B, cap] = dst.shape as number[], T = src.shape[1]!;
  const row = size(dst.shape.slice(2));
  const h = heap(be), d = off(be, dst), s = off(be, src);
  for (let b = 0; b < B!; b++) addon!.copy(h, s + 4 * b * T * row, d + 4 * (b * cap! + pos0) * row, T * row);
}

/** Σ x² of each tensor, without a kernel launch per tensor (gradient clipping). */
export function sumSquares(tensors: tf.Tensor[]): number {
  const be = tf.backend() as unknown as WasmBackend;
  let s = 0;
  for (const t of tensors) s += addon!.sumSquares(heap(be), off(be, t), t.size);
  return s;
}
