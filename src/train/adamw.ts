/**
 * AdamW (Loshchilov & Hutter): Adam moments plus weight decay applied to the weights directly,
 * p ← p − lr·(m̂/(√v̂+ε) + λ·p). Decay skips 1-D tensors (biases, norm gains), as nanoGPT does.
 */
import * as tf from '@tensorflow/tfjs-core';
import { nativeKernels, sumSquares } from '../backend/native.js';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weight_decay: number;
}

export class AdamW {
  readonly m: Record<string, tf.Variable> = {};
  readonly v: Record<string, tf.Variable> = {};
  step = 0;

  constructor(private readonly params: Record<string, tf.Variable>, private readonly cfg: AdamWConfig) {
    for (const [name, p] of Object.entries(params)) {
      // tidy frees the zerosLike initial values (a variable keeps its own reference; tidy never disposes variables).
      this.m[name] = tf.tidy(() => tf.variable(tf.zerosLike(p), false));
      this.v[name] = tf.tidy(() => tf.variable(tf.zerosLike(p), false));
    }
  }

  /** One update with learning rate lr; grads are consumed (disposed). */
  apply(grads: Record<string, tf.Tensor>, lr: number): void {
    this.step += 1;
    const { beta1, beta2, eps, weight_decay } = this.cfg;
    const bc1 = 1 - Math.pow(beta1, this.step), bc2 = 1 - Math.pow(beta2, this.step);
    for (const [name, p] of Object.entries(this.params)) {
      const g = grads[name];
      if (!g) continue;
      if (nativeKernels()) {
        // One native kernel per parameter instead of ~12 (the same arithmetic, in float32).
        const decay = p.rank >= 2 ? weight_decay : 0;
        const attrs = { lr, beta1, beta2, eps, decay, bc1, bc2, gscale: 1 };
        const [np, nm, nv] = tf.engine().runKernel('LlmctlAdamW', { p, g, m: this.m[name]!, v: this.v[name]! }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
        p.assign(np!);
        this.m[name]!.assign(nm!);
        this.v[name]!.assign(nv!);
        for (const t of [np!, nm!, nv!, g]) t.dispose();
        continue;
      }
      tf.tidy(() => {
        const m = tf.add(tf.mul(this.m[name]!, beta1), tf.mul(g, 1 - beta1));
        const v = tf.add(tf.mul(this.v[name]!, beta2), tf.mul(tf.square(g), 1 - beta2));
        this.m[name]!.assign(m);
        this.v[name]!.assign(v);
        const update = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), eps));
        const decay = p.rank >= 2 ? weight_decay : 0;
        p.assign(tf.sub(tf.mul(p, 1 - lr * decay), tf.mul(update, lr)));
      });
      g.dispose();
    }
  }

  /** Moments as named tensors for optimizer.safetensors ("<param>.exp_avg", "<param>.exp_avg_sq" as in torch). */
  stateTensors(): Record<string, tf.Tensor> {
    const out: Record<string, tf.Tensor> = {};
    for (const name of Object.keys(this.params)) {
      out[`${name}.exp_avg`] = this.m[name]!;
      out[`${name}.exp_avg_sq`] = this.v[name]!;
    }
    return out;
  }

  loadState(tensors: Record<string, Float32Array>, step: number): void {
    for (const name of Object.keys(this.params)) {
      const m = tensors[`${name}.exp_avg`], v = tensors[`${name}.exp_avg_sq`];
      if (!m || !v) throw new Error(`optimizer state has no moments for '${name}'`);
      tf.tidy(() => {
        this.m[name]!.assign(tf.tensor(m, this.m[name]!.shape));
        this.v[name]!.assign(tf.tensor(v, this.v[name]!.shape));
      });
    }
    this.step = step;
  }

  dispose(): void {
    for (const t of [...Object.values(this.m), ...Object.values(this.v)]) t.dispose();
  }
}

/**
 * acc + g per parameter name, consuming both (the running sum of micro-batch gradients). One helper for
 * the trainer, the data-parallel pool and its workers, so all sum in the same order.
 */
export function addGrads(acc: Record<string, tf.Tensor>, g: Record<string, tf.Tensor>): Record<string, tf.Tensor> {
  const out = { ...acc };
  for (const [name, grad] of Object.entries(g)) {
    const prev = out[name];
    out[name] = prev ? tf.add(prev, grad) : grad;
    if (prev) {
      prev.dispose();
      grad.dispose();
    }
  }
  return out;
}

/** Global L2 norm of all gradients; scales them in place to max_norm when above it. Returns the norm before clipping. */
export function clipGradNorm(grads: Record<string, tf.Tensor>, maxNorm: number): number {
  if (nativeKernels()) return clipScale(grads, maxNorm, Math.sqrt(sumSquares(Object.values(grads))));
  const normT = tf.tidy(() => tf.sqrt(tf.addN(Object.values(grads).map((g) => tf.sum(tf.square(g))))));
  const norm = normT.dataSync()[0]!;
  normT.dispose(); // the tidy's result is ours to free: one leaked scalar per training step otherwise
  return clipScale(grads, maxNorm, norm);
}

function clipScale(grads: Record<string, tf.Tensor>, maxNorm: number, norm: number): number {
  if (maxNorm > 0 && norm > maxNorm) {
    const scale = maxNorm / (norm + 1e-6);
    for (const k of Object.keys(grads)) {
      const old = grads[k]!;
      grads[k] = tf.mul(old, scale);
      old.dispose();
    }
  }
  return norm;
}

export interface ScheduleConfig {
  lr: number;
  min_lr: number;
  warmup_steps: number;
  schedule: 'cosine' | 'constant' | 'linear';
}

/** Learning rate at step (0-based) of maxSteps: linear warmup, then cosine/linear decay to min_lr. */
export function learningRate(step: number, maxSteps: number, s: ScheduleConfig): number {
  if (step < s.warmup_steps) return (s.lr * (step + 1)) / (s.warmup_steps + 1);
  if (s.schedule === 'constant') return s.lr;
  const span = Math.max(1, maxSteps - s.warmup_steps);
  const progress = Math.min(1, (step - s.warmup_steps) / span);
  const coeff = s.schedule === 'cosine' ? 0.5 * (1 + Math.cos(Math.PI * progress)) : 1 - progress;
  return s.min_lr + coeff * (s.lr - s.min_lr);
}
