/** Config of `llmctl quantize` (configs/quantize.yaml). Strict objects: typos are errors. */
import { z } from 'zod';

/** Text the quantizer reads: plain text, or JSONL with a `text` field per line. */
export const QuantTextSchema = z.strictObject({
  path: z.string().min(1),
  /** JSONL field holding the text (ignored for plain text). */
  text_field: z.string().default('text'),
});

export const QuantizeConfigSchema = z.strictObject({
  /** Float checkpoint to quantize. */
  checkpoint: z.string().min(1),
  /** Checkpoint directory to write (config.json gets a quantization_config). */
  out_dir: z.string().min(1),
  /** int8: per-channel absmax; int4: group-wise round-to-nearest; gptq; awq (both int4). */
  method: z.enum(['int8', 'int4', 'gptq', 'awq']),
  /** int4 / gptq / awq: input columns per scale; -1 = one per output channel. */
  group_size: z.union([z.literal(-1), z.int().positive()]).default(128),
  /** Symmetric (zero point 8) or min/max with a zero point per group. */
  sym: z.boolean().default(true),
  /** gptq: act-order (columns by decreasing Hessian diagonal). */
  desc_act: z.boolean().default(false),
  /** gptq: dampening, a fraction of the Hessian's mean diagonal. */
  damp_percent: z.number().positive().max(1).default(0.01),
  /** gptq: columns per lazy-update block. */
  block_size: z.int().positive().default(128),
  /** int8: input features whose calibration |x| reaches this stay float (LLM.int8()'s outliers, 6.0 there); 0 = none. */
  outlier_threshold: z.number().nonnegative().default(0),
  /** awq: grid points for α in [0, 1). */
  awq_grid: z.int().min(2).default(20),
  /** gptq / awq: calibration text; the first samples × seq_len tokens are used. */
  calibration: QuantTextSchema.extend({
    samples: z.int().positive().default(32),
    /** Tokens per sample; default the model's context length. */
    seq_len: z.int().positive().optional(),
  }).optional(),
  /** Held-out text for perplexity before and after: its LAST max_tokens tokens (the end of a corpus, like nanoGPT's val split). */
  eval: QuantTextSchema.extend({ max_tokens: z.int().positive().default(8192) }).optional(),
}).refine((c) => c.method === 'int4' || (c.method === 'int8' && !c.outlier_threshold) || c.calibration !== undefined, { message: 'gptq, awq and int8 with outlier_threshold need calibration text (calibration.path)', path: ['calibration'] })
  .refine((c) => c.method !== 'int8' || c.group_size === 128 || c.group_size === -1, { message: 'int8 is per output channel; leave group_size unset', path: ['group_size'] });
export type QuantizeConfig = z.infer<typeof QuantizeConfigSchema>;
