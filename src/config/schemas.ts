/**
 * Config pieces shared by the stage schemas (pretrain, finetune, eval, ...).
 *
 * Conventions:
 *  - every object is `z.strictObject`, so unknown keys (typos) are errors;
 *  - defaults live here, and derived defaults (n_kv_head, bias, min_lr) are resolved by transforms,
 *    so the parsed value is the fully resolved config that gets written into checkpoint manifests.
 *
 * Each schema is exported twice: `XxxShape` (plain strict object, for `.extend()`/`.pick()` in stage schemas)
 * and `XxxSchema` (with cross-field checks and derived defaults; use this one when nesting).
 */
import { z } from 'zod';

const posInt = () => z.int().positive();
const nonNegInt = () => z.int().nonnegative();

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

export const ModelArchSchema = z.enum(['gpt2', 'llama']);
export type ModelArch = z.infer<typeof ModelArchSchema>;

export const ModelConfigShape = z.strictObject({
  /** gpt2: LayerNorm + GELU MLP + learned positions; llama: RMSNorm + SwiGLU + RoPE. */
  arch: ModelArchSchema.default('gpt2'),
  vocab_size: posInt(),
  /** Context length (max sequence length). */
  n_ctx: posInt(),
  n_layer: posInt(),
  n_embd: posInt(),
  n_head: posInt(),
  /** Key/value heads for grouped-query attention; defaults to n_head (plain multi-head attention). */
  n_kv_head: posInt().optional(),
  /**
   * MLP hidden size. Left unresolved when omitted: the model code picks the arch's convention
   * (gpt2: 4 * n_embd; llama: its own SwiGLU sizing).
   */
  n_inner: posInt().optional(),
  norm_eps: z.number().positive().default(1e-5),
  rope_theta: z.number().positive().default(10000),
  tie_embeddings: z.boolean().default(true),
  dropout: z.number().min(0).lt(1).default(0),
  /** Biases in linear layers; defaults to true for gpt2 and false for llama. */
  bias: z.boolean().optional(),
});

export const ModelConfigSchema = ModelConfigShape.superRefine((m, ctx) => {
  if (m.n_embd % m.n_head !== 0) {
    ctx.addIssue({
      code: 'custom',
      path: ['n_embd'],
      message: `must be divisible by n_head (n_embd=${m.n_embd}, n_head=${m.n_head})`,
    });
  }
  const kv = m.n_kv_head ?? m.n_head;
  if (m.n_head % kv !== 0) {
    ctx.addIssue({
      code: 'custom',
      path: ['n_kv_head'],
      message: `must divide n_head (n_head=${m.n_head}, n_kv_head=${kv})`,
    });
  }
}).transform((m) => ({
  ...m,
  n_kv_head: m.n_kv_head ?? m.n_head,
  bias: m.bias ?? m.arch === 'gpt2',
}));

/** What the user writes (optional fields may be omitted). */
export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
/** Resolved model config: n_kv_head and bias always set; n_inner may still be undefined. */
export type ModelConfig = z.output<typeof ModelConfigSchema>;

// ---------------------------------------------------------------------------------------------
// Optimizer + learning-rate schedule
// ---------------------------------------------------------------------------------------------

export const ScheduleSchema = z.enum(['cosine', 'constant', 'linear']);
export type ScheduleName = z.infer<typeof ScheduleSchema>;

export const OptimShape = z.strictObject({
  /** Peak learning rate (reached after warmup). */
  lr: z.number().positive().default(3e-4),
  /** Final learning rate for cosine/linear decay; defaults to lr / 10. */
  min_lr: z.number().nonnegative().optional(),
  weight_decay: z.number().nonnegative().default(0.1),
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.95),
  eps: z.number().positive().default(1e-8),
  /** Clip the global gradient norm to this value; 0 disables clipping. */
  grad_clip: z.number().nonnegative().default(1.0),
  warmup_steps: nonNegInt().default(100),
  schedule: ScheduleSchema.default('cosine'),
});

export const OptimSchema = OptimShape.superRefine((o, ctx) => {
  if (o.min_lr !== undefined && o.min_lr > o.lr) {
    ctx.addIssue({ code: 'custom', path: ['min_lr'], message: `must be <= lr (min_lr=${o.min_lr}, lr=${o.lr})` });
  }
}).transform((o) => ({ ...o, min_lr: o.min_lr ?? o.lr / 10 }));

export type OptimConfigInput = z.input<typeof OptimSchema>;
export type OptimConfig = z.output<typeof OptimSchema>;

// ---------------------------------------------------------------------------------------------
// Training loop
// ---------------------------------------------------------------------------------------------

export const TrainLoopSchema = z.strictObject({
  /** Optimizer steps (each step = grad_accum micro-batches). */
  max_steps: posInt(),
  /** Sequences per micro-batch. */
  batch_size: posInt(),
  grad_accum: posInt().default(1),
  /** Evaluate every N steps; 0 disables periodic evaluation. */
  eval_every: nonNegInt().default(100),
  eval_batches: posInt().default(8),
  /** Save a checkpoint every N steps; 0 saves only at the end. */
  save_every: nonNegInt().default(500),
  log_every: posInt().default(10),
  seed: nonNegInt().default(1337),
  /**
   * Data-parallel replicas: the main thread + workers−1 worker threads. Each optimizer step then
   * processes grad_accum × workers micro-batches (same result as one process with that grad_accum).
   */
  workers: posInt().default(1),
});

export type TrainLoopConfigInput = z.input<typeof TrainLoopSchema>;
export type TrainLoopConfig = z.output<typeof TrainLoopSchema>;
