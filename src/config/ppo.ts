/** Config of `llmctl ppo` (PPO with a value head, or GRPO): roles, prompts, reward, rollout, objective. */
import { z } from 'zod';
import { OptimSchema } from './schemas.js';
import { LoraAdapterSchema } from './stages.js';

/** Rule rewards score the response text (special tokens removed), so verifiable rewards need no reward model. */
export const RewardConfigSchema = z.discriminatedUnion('type', [
  /** `score` when the response matches the regular expression, 0 otherwise. */
  z.strictObject({ type: z.literal('regex'), pattern: z.string().min(1), flags: z.string().default(''), score: z.number().default(1) }),
  /** `score` when the response contains the text (any of the texts), 0 otherwise. */
  z.strictObject({ type: z.literal('contains'), text: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]), case_sensitive: z.boolean().default(false), score: z.number().default(1) }),
  /** −|n − target| / target for a response of n tokens (or characters): 0 at the target length. */
  z.strictObject({ type: z.literal('length'), target: z.int().positive(), unit: z.enum(['tokens', 'chars']).default('tokens') }),
  /** The scalar head of a reward model written by `llmctl rm`, read at the last response token. */
  z.strictObject({
    type: z.literal('model'),
    path: z.string().min(1),
    /** A reward model with another tokenizer: score the decoded (prompt, response) text re-rendered with its own. */
    retokenize: z.boolean().default(false),
  }),
]);
export type RewardConfig = z.infer<typeof RewardConfigSchema>;

export const PromptDataSchema = z.strictObject({
  /** JSONL rows {prompt}, {messages} (the conversation before the last assistant turn), or {prompt, chosen, rejected}. */
  path: z.string().min(1),
  /** Held-out prompts for the before/after reward and KL; default: the last eval_fraction of `path`. */
  eval_path: z.string().min(1).optional(),
  eval_fraction: z.number().min(0).lt(1).default(0.1),
  /** Render prompts as a ChatML user turn + assistant header (default: when the tokenizer has ChatML tokens). */
  chat: z.boolean().optional(),
  max_rows: z.int().positive().optional(),
});

export const RolloutConfigSchema = z.strictObject({
  /** Prompts per step (PPO: one response each; GRPO: group_size responses each). */
  batch_size: z.int().positive().default(8),
  /** GRPO: samples per prompt (G). */
  group_size: z.int().min(2).default(4),
  max_new_tokens: z.int().positive().default(24),
  temperature: z.number().gt(0).default(1),
  top_k: z.int().nonnegative().default(0),
  top_p: z.number().gt(0).max(1).default(1),
  /** Subtracted from the score of a response that ran out of tokens without EOS (TRL's missing_eos_penalty). */
  missing_eos_penalty: z.number().nonnegative().optional(),
});

export const KlConfigSchema = z.strictObject({
  /** β: PPO puts −β·KL per token into the reward; GRPO adds β·KL (k3) to the loss. */
  coef: z.number().nonnegative().default(0.05),
  /** PPO's per-token estimator in the reward (GRPO always uses k3). */
  estimator: z.enum(['k1', 'k2', 'k3']).default('k1'),
  /** Adaptive β (Ziegler et al.): the KL per sequence to steer toward; omit for a fixed β. */
  target: z.number().positive().optional(),
  horizon: z.int().positive().default(10000),
});

export const PpoObjectiveSchema = z.strictObject({
  /** Passes over each step's rollouts. */
  epochs: z.int().positive().default(4),
  /** Sequences per gradient step (batch_size × group_size sequences per step under GRPO). */
  mini_batch_size: z.int().positive().default(4),
  cliprange: z.number().positive().default(0.2),
  cliprange_value: z.number().positive().default(0.2),
  vf_coef: z.number().nonnegative().default(0.1),
  gamma: z.number().min(0).max(1).default(1),
  lam: z.number().min(0).max(1).default(0.95),
  /** Whiten the per-token rewards (mean kept) before GAE. */
  whiten_rewards: z.boolean().default(false),
  /** Clip scores to ±reward_clip before the KL penalty. */
  reward_clip: z.number().positive().optional(),
  /** Stop the current epoch once a mini-batch's approx KL exceeds this bound. */
  max_approx_kl: z.number().positive().optional(),
  kl: KlConfigSchema.prefault({}),
});

export const ValueConfigSchema = z.strictObject({
  /** true: a value head on the policy's own trunk (one extra n_embd+1 params); false: a separate value model. */
  shared: z.boolean().default(false),
  /** Trunk of the separate value model; default: the reward model (as TRL), or the policy with a rule reward. */
  init_from: z.string().min(1).optional(),
});

export const RlLoopSchema = z.strictObject({
  /** Steps, each one rollout batch + epochs of mini-batch updates. */
  max_steps: z.int().positive(),
  /** Evaluate on the held-out prompts every N steps (and always before the first and after the last); 0 = only then. */
  eval_every: z.int().nonnegative().default(0),
  /** Held-out prompts evaluated (the first N). */
  eval_prompts: z.int().positive().default(32),
  save_every: z.int().nonnegative().default(0),
  /** Write a (prompt, response, reward) sample to samples.jsonl every N steps. */
  sample_every: z.int().positive().default(5),
  seed: z.int().nonnegative().default(1337),
});

export const PpoConfigSchema = z.strictObject({
  algorithm: z.enum(['ppo', 'grpo']).default('ppo'),
  /** The policy to optimise, e.g. runs/sft (a LoRA dir is merged into its base first). */
  policy: z.string().min(1),
  /** Frozen reference for the KL; default: the policy checkpoint itself. */
  reference: z.string().min(1).optional(),
  /** Train a LoRA adapter on the policy instead of all its weights; the reference is then the policy with the adapter off. */
  lora: LoraAdapterSchema.optional(),
  reward: RewardConfigSchema,
  prompts: PromptDataSchema,
  rollout: RolloutConfigSchema.prefault({}),
  ppo: PpoObjectiveSchema.prefault({}),
  value: ValueConfigSchema.prefault({}),
  optim: OptimSchema.prefault({ lr: 1e-5, min_lr: 1e-5, warmup_steps: 0, weight_decay: 0, schedule: 'constant' }),
  train: RlLoopSchema,
  out_dir: z.string().min(1),
});
export type PpoConfig = z.infer<typeof PpoConfigSchema>;
