/** Zod schemas of each stage's config file. Every object is strict so typos are errors. */
import { z } from 'zod';
import { CleanSchema } from './clean.js';
import { ModelConfigSchema, OptimSchema, TrainLoopSchema } from './schemas.js';

export const PrepareConfigSchema = z.strictObject({
  /** Text files (.txt: one document per file) or JSONL files (one document per line). */
  inputs: z.array(z.string().min(1)).min(1),
  /** JSONL field that holds the text. */
  text_field: z.string().default('text'),
  out_dir: z.string().min(1),
  tokenizer: z.union([
    /** Train a byte-level BPE on the inputs. */
    z.strictObject({ train: z.strictObject({ vocab_size: z.int().min(256), max_bytes: z.int().positive().default(20_000_000) }) }),
    /** Reuse the tokenizer of a checkpoint or tokenizer directory. */
    z.strictObject({ from: z.string().min(1) }),
  ]),
  /** Fraction of the input (by bytes, taken from the end, like nanoGPT) kept for validation. */
  val_fraction: z.number().min(0).lt(1).default(0.1),
  shard_tokens: z.int().positive().default(50_000_000),
  /** Corpus cleaning before tokenizing (dedup, quality, PII, toxicity); see src/config/clean.ts. */
  clean: CleanSchema.optional(),
});
export type PrepareConfig = z.infer<typeof PrepareConfigSchema>;

export const PretrainConfigSchema = z.strictObject({
  /** Directory written by `llmctl prepare`. */
  data: z.strictObject({ dir: z.string().min(1) }),
  /** Architecture of a new model; vocab_size defaults to the tokenizer's. Ignored with init_from. */
  model: ModelConfigSchema.optional(),
  /** Continue pretraining from this checkpoint instead of a fresh model. */
  init_from: z.string().min(1).optional(),
  optim: OptimSchema.prefault({}),
  train: TrainLoopSchema,
  out_dir: z.string().min(1),
}).refine((c) => c.model !== undefined || c.init_from !== undefined, { message: 'set model (a new model) or init_from (a checkpoint)', path: ['model'] });
export type PretrainConfig = z.infer<typeof PretrainConfigSchema>;

export const SamplingSchema = z.strictObject({
  max_tokens: z.int().positive().default(200),
  /** 0 means greedy (argmax). */
  temperature: z.number().min(0).default(0.8),
  top_k: z.int().nonnegative().default(0),
  top_p: z.number().gt(0).max(1).default(1),
  repetition_penalty: z.number().positive().default(1),
  stop: z.array(z.string()).default([]),
  seed: z.int().nonnegative().optional(),
});
export type SamplingConfig = z.infer<typeof SamplingSchema>;

export const GenerateConfigSchema = z.strictObject({
  checkpoint: z.string().min(1),
  adapter: z.string().min(1).optional(),
  prompt: z.string().default(''),
  /** Wrap the prompt as a ChatML user turn. */
  chat: z.boolean().default(false),
  sampling: SamplingSchema.prefault({}),
});
export type GenerateConfig = z.infer<typeof GenerateConfigSchema>;

/** Instruction data for sft / lora (Alpaca or chat JSONL). */
export const SftDataSchema = z.strictObject({
  /** JSONL file: Alpaca rows {instruction, input, output} or chat rows {messages: [{role, content}]}. */
  path: z.string().min(1),
  /** auto: chat when a row has `messages`, Alpaca otherwise. */
  format: z.enum(['auto', 'alpaca', 'chat']).default('auto'),
  /** Skip (and count) bad rows instead of stopping at the first one. */
  skip_invalid: z.boolean().default(false),
  /** Concatenate whole examples into rows of up to n_ctx + 1 tokens (fewer padded positions). */
  packing: z.boolean().default(false),
  /** Fraction of the rows (taken from the end) held out for val_loss; 0 = no evaluation. */
  val_fraction: z.number().min(0).lt(1).default(0),
  /** Use only the first N rows of the file. */
  max_rows: z.int().positive().optional(),
});
export type SftDataConfig = z.infer<typeof SftDataSchema>;

export const SftConfigSchema = z.strictObject({
  /** Checkpoint to fine-tune (e.g. runs/pretrain); its tokenizer's chat template renders the data. */
  base: z.string().min(1),
  data: SftDataSchema,
  optim: OptimSchema.prefault({}),
  train: TrainLoopSchema,
  out_dir: z.string().min(1),
});
export type SftConfig = z.infer<typeof SftConfigSchema>;

/** Projections LoRA can adapt (PEFT names, or the short q/k/v/o/gate/up/down). */
export const LoraTargetSchema = z.enum(['q', 'k', 'v', 'o', 'gate', 'up', 'down', 'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);

export const LoraAdapterSchema = z.strictObject({
  r: z.int().positive().default(8),
  alpha: z.number().positive().default(16),
  dropout: z.number().min(0).lt(1).default(0.05),
  target_modules: z.array(LoraTargetSchema).min(1).default(['q_proj', 'k_proj', 'v_proj', 'o_proj']),
});

export const LoraConfigSchema = z.strictObject({
  /** Base checkpoint; stays frozen (only the adapter trains). */
  base: z.string().min(1),
  data: SftDataSchema,
  lora: LoraAdapterSchema.prefault({}),
  optim: OptimSchema.prefault({}),
  train: TrainLoopSchema,
  /** Written: adapter_config.json + adapter_model.safetensors (PEFT names) + trainer state; not the base weights. */
  out_dir: z.string().min(1),
});
export type LoraStageConfig = z.infer<typeof LoraConfigSchema>;
