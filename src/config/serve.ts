/** `llmctl serve` config (configs/serve.yaml): the HTTP front, the engine's batching budgets and the KV pool. */
import { z } from 'zod';

export const ServeConfigSchema = z.strictObject({
  /** Checkpoint directory of the base model (or a LoRA dir: its base is served with it as the default model). */
  checkpoint: z.string().min(1),
  /** Name clients put in `model` for the base; default: the checkpoint directory's name. */
  model_name: z.string().min(1).optional(),
  /** LoRA adapters served as extra models over the one base: {name: adapter_dir}. */
  lora: z.record(z.string().min(1), z.string().min(1)).default({}),
  host: z.string().default('127.0.0.1'),
  /** 0 = any free port (the chosen one is logged). */
  port: z.int().min(0).max(65535).default(8000),
  /** When set, /v1/* requires `Authorization: Bearer <api_key>`. */
  api_key: z.string().min(1).optional(),
  engine: z.strictObject({
    /** Most sequences decoding together (1 = one request at a time). */
    max_num_seqs: z.int().positive().default(16),
    /** Token budget of one step: prompt chunks + one token per decoding sequence (chunked prefill). */
    max_num_batched_tokens: z.int().positive().default(512),
    /** Positions per KV block. */
    block_size: z.int().positive().default(16),
    /** Blocks in the KV pool; default: enough for max_num_seqs full contexts, or what kv_cache_mb allows. */
    num_blocks: z.int().positive().optional(),
    /** Memory budget of the KV pool in MiB (used when num_blocks is not set). */
    kv_cache_mb: z.number().positive().optional(),
    /** Reuse the KV blocks of identical prompt prefixes across requests. */
    prefix_caching: z.boolean().default(true),
  }).prefault({}),
  limits: z.strictObject({
    /** Sequences allowed to wait for a slot; beyond it requests get 429 with Retry-After. */
    max_waiting: z.int().positive().default(256),
    max_body_bytes: z.int().positive().default(1_000_000),
    /** Cancel a request still running after this many seconds (0 = never). */
    request_timeout_s: z.number().min(0).default(600),
    /** On SIGTERM: how long running requests may take to finish before they are cancelled. */
    drain_timeout_s: z.number().min(0).default(30),
  }).prefault({}),
});
export type ServeConfig = z.infer<typeof ServeConfigSchema>;
