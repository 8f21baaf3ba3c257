/** Config schemas of the commands that convert rather than train: `import` and `lora merge`. Flags fill the same fields. */
import { z } from 'zod';

export const ImportConfigSchema = z.strictObject({
  format: z.enum(['llama2c', 'hf', 'gguf']).default('llama2c'),
  /** llama2.c model .bin, or a Hugging Face model directory (format hf) */
  model: z.string().min(1),
  /** llama2.c tokenizer .bin (e.g. tok512.bin); format llama2c only */
  tokenizer: z.string().min(1).optional(),
  /** Checkpoint directory to write. */
  out: z.string().min(1),
});
export type ImportConfig = z.infer<typeof ImportConfigSchema>;

export const LoraMergeConfigSchema = z.strictObject({
  /** Adapter directory written by `llmctl lora`. */
  adapter: z.string().min(1),
  /** Base checkpoint; default: the adapter's base_model_name_or_path. */
  base: z.string().min(1).optional(),
  /** Checkpoint directory to write. */
  out: z.string().min(1),
});
export type LoraMergeConfig = z.infer<typeof LoraMergeConfigSchema>;
