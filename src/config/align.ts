/** Zod schemas of the alignment stages: `rm` (reward model) and `dpo`. Strict objects, so typos are errors. */
import { z } from 'zod';
import { OptimSchema, TrainLoopSchema } from './schemas.js';
import { LoraAdapterSchema } from './stages.js';

/** Preference data (see src/data/preference.ts for the formats). */
export const PreferenceDataSchema = z.strictObject({
  /** JSONL: {prompt, chosen, rejected}, HH-RLHF transcripts, LLaMA-Factory pairs or ranked {prompt, responses}. */
  path: z.string().min(1),
  format: z.enum(['auto', 'standard', 'hh', 'llamafactory', 'ranked']).default('auto'),
  /** Skip (and count) bad rows instead of stopping at the first one. */
  skip_invalid: z.boolean().default(false),
  /** Fraction of the pairs (taken from the end) held out for evaluation; 0 = no evaluation. */
  val_fraction: z.number().min(0).lt(1).default(0.1),
  /** A separate held-out file instead of val_fraction (same formats). */
  val_path: z.string().min(1).optional(),
  /** Use only the first N pairs of the file. */
  max_rows: z.int().positive().optional(),
});
export type PreferenceDataConfig = z.infer<typeof PreferenceDataSchema>;

export const RmConfigSchema = z.strictObject({
  /** SFT checkpoint the reward model starts from (its transformer; the score head starts fresh). */
  base: z.string().min(1),
  data: PreferenceDataSchema,
  reward: z.strictObject({
    /** TRL's center_rewards_coefficient: + coef · mean((r_chosen + r_rejected)²) keeps rewards near zero. */
    center_rewards_coefficient: z.number().min(0).default(0),
  }).prefault({}),
  /** Present: train a LoRA adapter (+ the score head) on the frozen base; absent: full training. */
  lora: LoraAdapterSchema.optional(),
  optim: OptimSchema.prefault({}),
  train: TrainLoopSchema,
  out_dir: z.string().min(1),
});
export type RmConfig = z.infer<typeof RmConfigSchema>;

export const DpoConfigSchema = z.strictObject({
  /** SFT checkpoint the policy starts from. */
  base: z.string().min(1),
  /** Frozen reference model; default: base itself (with a LoRA policy: the base with the adapter off). */
  ref: z.string().min(1).optional(),
  data: PreferenceDataSchema,
  dpo: z.strictObject({
    beta: z.number().positive().default(0.1),
    loss_type: z.enum(['sigmoid', 'ipo', 'hinge']).default('sigmoid'),
    /** Conservative DPO: assumed probability that a preference label is flipped (sigmoid loss). */
    label_smoothing: z.number().min(0).lt(0.5).default(0),
    /** RPO: + rpo_alpha · NLL of the chosen response (per token). */
    rpo_alpha: z.number().positive().optional(),
    /** Compute the reference log-probs once before training (cached in the checkpoint, reused on resume). */
    precompute_ref_logps: z.boolean().default(true),
  }).prefault({}),
  /** Present: the policy is a LoRA adapter on the frozen base; absent: full training. */
  lora: LoraAdapterSchema.optional(),
  optim: OptimSchema.prefault({}),
  train: TrainLoopSchema,
  out_dir: z.string().min(1),
});
export type DpoConfig = z.infer<typeof DpoConfigSchema>;
