/** Config of `llmctl arena`. */
import { z } from 'zod';
import { SamplingSchema } from './stages.js';

export const ArenaConfigSchema = z.strictObject({
  /** name → checkpoint directory (full or LoRA adapter dir); not needed with judge battles:FILE. */
  models: z.record(z.string().regex(/^[\w.+-]+$/, 'model names: letters, digits, _ . + -'), z.string().min(1)).default({}),
  /** JSONL with "prompt" (or instruction / question / text), or a text file with one prompt per line. */
  prompts: z.string().min(1).optional(),
  /** rm:DIR (a reward model from llmctl rm), human (vote in the terminal), or battles:FILE (FastChat clean battles). */
  judge: z.string().min(1),
  out_dir: z.string().min(1).default('runs/arena'),
  /** Wrap each prompt as a ChatML user turn: for every model (true), or for the models named (e.g. [sft]). */
  chat: z.union([z.boolean(), z.array(z.string().min(1))]).default(false),
  sampling: SamplingSchema.prefault({ max_tokens: 64, temperature: 0 }),
  /** rm judge: reward differences within this margin are ties. */
  margin: z.number().nonnegative().default(0.05),
  bootstrap_rounds: z.int().positive().default(1000),
  seed: z.int().nonnegative().default(42),
  elo: z.strictObject({
    k: z.number().positive().default(4),
    scale: z.number().positive().default(400),
    base: z.number().gt(1).default(10),
    init: z.number().default(1000),
  }).prefault({}),
});
export type ArenaConfigInput = z.input<typeof ArenaConfigSchema>;
