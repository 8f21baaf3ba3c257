/** Config of `llmctl eval` (and the arena's generation settings). Strict objects: a typo is an error. */
import { z } from 'zod';

export const EvalConfigSchema = z.strictObject({
  checkpoint: z.string().min(1),
  /** LoRA adapter directory applied on top of the checkpoint. */
  adapter: z.string().min(1).optional(),
  tasks: z.array(z.string().min(1)).min(1),
  /** Where the task files lie (see DEFAULT_PATHS in src/eval/tasks.ts); per-task `paths` override it. */
  data_dir: z.string().min(1).default('../shared/data/eval'),
  /** Task name → file or directory in that task's native format (perplexity: a text or JSONL file). */
  paths: z.record(z.string(), z.string().min(1)).default({}),
  /** GSM8K few-shot examples (e.g. the train split); default: other items of the eval file. */
  gsm8k_fewshot: z.string().min(1).optional(),
  /** Overrides each task's default number of few-shot examples. */
  num_fewshot: z.int().nonnegative().optional(),
  /** Only the first N items of each task. */
  limit: z.int().min(1).optional(),
  batch_size: z.int().positive().default(8),
  /** Run a multiple-choice question's context once and reuse its KV cache for every choice. */
  share_context: z.boolean().default(true),
  /** Perplexity: window stride in tokens (default: the context length, i.e. disjoint windows). */
  stride: z.int().positive().optional(),
  /** Perplexity: score only the last N bytes of each text (e.g. the held-out tail prepare's val split takes). */
  perplexity_tail_bytes: z.int().positive().optional(),
  log_samples: z.boolean().default(false),
  /** Results JSON path; samples_<task>.jsonl go beside it. */
  out: z.string().min(1).optional(),
  gsm8k: z.strictObject({ max_tokens: z.int().positive().default(256) }).prefault({}),
  humaneval: z.strictObject({
    /** Completions per problem (n of pass@k); more than 1 samples with temperature / top_p. */
    samples: z.int().positive().default(1),
    k: z.array(z.int().positive()).min(1).default([1]),
    temperature: z.number().min(0).default(0.8),
    top_p: z.number().gt(0).max(1).default(0.95),
    seed: z.int().nonnegative().default(1234),
    max_tokens: z.int().positive().default(512),
  }).prefault({}),
  sandbox: z.strictObject({
    python: z.string().min(1).default('python3'),
    timeout_ms: z.int().positive().default(3000),
    memory_mb: z.int().positive().default(512),
    output_kb: z.int().positive().default(64),
    workers: z.int().positive().default(2),
  }).prefault({}),
  /** 13-gram overlap with training data: true = the corpora in the checkpoint's lineage, or a list of files. */
  contamination: z.union([z.boolean(), z.array(z.string().min(1)).min(1)]).default(false),
});
export type EvalConfig = z.infer<typeof EvalConfigSchema>;
