/**
 * `llmctl ppo`: RL fine-tuning of a policy against a reward, held near a frozen reference by a KL
 * penalty. Two algorithms share the rollout and the clipped objective:
 *   ppo  — InstructGPT / TRL's PPOTrainer: per-token reward −β·KL + the score at the last token, a value
 *          model, GAE advantages (whitened), clipped policy + value losses over shuffled mini-batches.
 *   grpo — DeepSeekMath: G samples per prompt, advantage = (score − group mean)/group std, β·KL (k3) in
 *          the loss, no value model.
 *
 * Roles, as parameter maps (gpt.ts's forward reads any of them):
 *   policy     trainable (all weights, or LoRA adapters on frozen weights with `lora:`)
 *   reference  frozen; the policy checkpoint itself (with LoRA: the same weights with the adapter off)
 *   value      ppo only: a head `v_head` on the policy's trunk (value.shared) or on a separate trunk
 *   reward     a rule on the response text (rule-reward.ts)
 *
 * A step = one rollout batch, then `ppo.epochs` passes of mini-batch updates with the shared AdamW,
 * schedule and gradient clipping (adamw.ts). Checkpoints are written between steps through the one
 * checkpoint writer, so a resume needs no rollout buffer: it restores the policy, the value model
 * (value_head.safetensors), the optimizer moments, the RNG, β and the prompt cursor, and continues the
 * same curve.
 */
import * as tf from '@tensorflow/tfjs-core';
import { appendFileSync, copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type Rollout, chunked, disposeRowBatch, pickRows, responseForward, rowBatch, sampleRollout, valueHead } from '../align/rollout.js';
import { KlController, clippedValueLoss, gae, groupAdvantages, grpoLoss, klEstimate, ppoPolicyLoss, shapeRewards, whiten } from '../align/rl-losses.js';
import { SCORE, type RewardModel, loadRewardModel, scoreConversations, scoreSequences } from '../align/reward.js';
import { type ResponseInfo, type RuleRewardConfig, ruleReward } from '../align/rule-reward.js';
import type { TrainerState } from '../checkpoint/manifest.js';
import { closeOutputDir, contentIds } from '../checkpoint/output.js';
import { type LoadedCheckpoint, METRICS_FILE, disposeParams, loadCheckpoint, loadTrainerState, readTensorFile, resumableDir, saveCheckpoint, toTensorData, toVariables } from '../checkpoint/model.js';
import { writeSafetensors } from '../checkpoint/safetensors.js';
import type { PpoConfig } from '../config/ppo.js';
import { type Prompt, encodePrompt, promptMessages, promptText, readPromptsJsonl } from '../data/prompts.js';
import type { LanguageModel } from '../model/generate.js';
import { type ForwardOptions, type ModelConfig, type Params, countParams } from '../model/gpt.js';
import { type LoraConfig, initLora, loadAdapter, loraScale, mergeAdapter, saveAdapter } from '../model/lora.js';
import { stopTokenIds } from '../model/prompt.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { Progress, log } from '../util/log.js';
import { Rng } from '../util/rng.js';
import { AdamW, clipGradNorm, learningRate } from './adamw.js';
import { NonFiniteLossError, truncateMetrics } from './trainer.js';

export const VALUE_HEAD_FILE = 'value_head.safetensors';
export const SAMPLES_FILE = 'samples.jsonl';
const VALUE_TRUNK_PREFIX = 'value_model.';

export interface PpoRunOptions {
  resume?: boolean;
  /** Replace a checkpoint already in out_dir. */
  overwrite?: boolean;
  /** A reward function in code (like TRL's reward_funcs callables), used instead of cfg.reward. */
  reward?: (r: ResponseInfo) => number;
  quiet?: boolean;
  /** After every step, with that step's logged metrics (tests watch memory and curves here). */
  onStep?(step: number, metrics: Record<string, number>): void;
  /** After every mini-batch update (tests check the first one's ratio and clipfrac). */
  onUpdate?(u: { step: number; epoch: number; minibatch: number; ratio: number; clipfrac: number; approxKl: number; maxAbsLogRatio: number }): void;
  /** Once after training, before tensors are freed: every role's parameters. */
  inspect?(roles: { policy: Params; reference: Params; value?: Params; reward?: Params }): void;
}

export interface EvalResult {
  /** Mean reward-function score on the held-out prompts (no EOS penalty). */
  score: number;
  /** Mean per-sequence KL to the reference, Σ_t (log π − log π_ref) over the sampled response. */
  kl: number;
  /** Share of responses that ended with a stop token. */
  eos: number;
  length: number;
  prompts: number;
}

export interface PpoResult {
  step: number;
  interrupted: boolean;
  /** The last step's metrics (TRL names). */
  metrics: Record<string, number>;
  evalStart?: EvalResult;
  evalEnd?: EvalResult;
  trainableParams: number;
  /** Seconds per step: generating, scoring (log-probs, values, reward), updating. */
  timing: { rollout: number; score: number; update: number; rolloutTokensPerSecond: number };
  prompts: { train: number; eval: number };
}

/** A checkpoint dir, or a LoRA dir merged into its base (the SFT model may be either). */
export function loadPolicyCheckpoint(dir: string): LoadedCheckpoint {
  if (existsSync(join(dir, 'model.safetensors')) || !existsSync(join(dir, 'adapter_config.json'))) return loadCheckpoint(dir);
  const { lora, config, baseModel } = loadAdapter(dir);
  const base = loadCheckpoint(baseModel);
  const merged = mergeAdapter(base.params, lora, loraScale(config));
  disposeParams(base.params);
  disposeParams(lora);
  return { ...base, dir, params: merged };
}

function sameTokenizer(a: Tokenizer, b: Tokenizer): boolean {
  return JSON.stringify(a.toJSON()) === JSON.stringify(b.toJSON());
}

interface EncodedPrompt {
  prompt: Prompt;
  ids: number[];
}

function loadPrompts(cfg: PpoConfig, tokenizer: Tokenizer, nCtx: number): { train: EncodedPrompt[]; eval: EncodedPrompt[] } {
  const chat = cfg.prompts.chat ?? tokenizer.tokenToId('<|im_start|>') !== undefined;
  const encode = (path: string, rows: ReturnType<typeof readPromptsJsonl>) =>
    rows.map(({ prompt, line }) => {
      const ids = encodePrompt(tokenizer, prompt, chat);
      if (ids.length + cfg.rollout.max_new_tokens > nCtx) {
        throw new Error(`${path}: line ${line}: the prompt has ${ids.length} tokens; with rollout.max_new_tokens ${cfg.rollout.max_new_tokens} that exceeds the context length ${nCtx}`);
      }
      return { prompt, ids };
    });
  const all = encode(cfg.prompts.path, readPromptsJsonl(cfg.prompts.path, cfg.prompts.max_rows));
  if (cfg.prompts.eval_path) return { train: all, eval: encode(cfg.prompts.eval_path, readPromptsJsonl(cfg.prompts.eval_path)) };
  const nEval = cfg.prompts.eval_fraction > 0 && all.length > 1 ? Math.max(1, Math.round(all.length * cfg.prompts.eval_fraction)) : 0;
  return { train: all.slice(0, all.length - nEval), eval: all.slice(all.length - nEval) };
}

/** Epoch e's prompt order: a Fisher–Yates shuffle seeded by (seed, e), so the cursor {epoch, pos} is the whole data state. */
function promptOrder(n: number, seed: number, epoch: number): number[] {
  const rng = new Rng(BigInt(seed) * 1_000_003n + BigInt(epoch) + 1n);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/** Resume state beyond the trainer's: prompt cursor, β, and AdamW's update count (several updates per step). */
interface Cursor {
  epoch: number;
  pos: number;
  kl_coef: number;
  updates: number;
}

const mean = (xs: readonly number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
const rowSums = (rows: number[][], mask: number[][]) => rows.map((r, i) => r.reduce((s, v, t) => s + (mask[i]![t] ? v : 0), 0));

/** Lock out_dir (refusing an existing checkpoint unless resume/overwrite, output.ts), run, release it. */
export async function ppo(cfg: PpoConfig, o: PpoRunOptions = {}): Promise<PpoResult> {
  const inputs = contentIds({ prompts: cfg.prompts.path, policy: join(cfg.policy, 'manifest.json') });
  const resumeDir = resumableDir(cfg.out_dir, o.resume, { overwrite: o.overwrite, config: cfg, inputs });
  try {
    return await ppoRun(cfg, o, resumeDir);
  } finally {
    closeOutputDir(cfg.out_dir);
  }
}

async function ppoRun(cfg: PpoConfig, o: PpoRunOptions, resumeDir: string | undefined): Promise<PpoResult> {
  const isPpo = cfg.algorithm === 'ppo';
  const resume = resumeDir ? loadTrainerState(resumeDir) : undefined;
  const owned: Params[] = []; // every tensor map loaded here, freed at the end
  const variables: tf.Variable[] = [];
  try {
    // ---- roles
    const sft = loadPolicyCheckpoint(cfg.policy);
    owned.push(sft.params);
    const { config, tokenizer } = sft;
    if (cfg.lora && !existsSync(join(cfg.policy, 'model.safetensors'))) throw new Error(`${cfg.policy}: lora: the policy must be a full checkpoint (the adapter's base), not an adapter directory`);
    let reference: Params = sft.params;
    if (cfg.reference) {
      const ref = loadCheckpoint(cfg.reference);
      owned.push(ref.params);
      if (!sameTokenizer(ref.tokenizer, tokenizer) || ref.config.vocab_size !== config.vocab_size) throw new Error(`${cfg.reference}: reference: its tokenizer differs from the policy's (${cfg.policy})`);
      reference = ref.params;
    }
    const policyFwd: ForwardOptions = {}, refFwd: ForwardOptions = {};
    let policyParams: Params, trainable: Record<string, tf.Variable>, adapter: Record<string, tf.Variable> | undefined, acfg: LoraConfig | undefined;
    if (cfg.lora) {
      acfg = { r: cfg.lora.r, alpha: cfg.lora.alpha, dropout: 0, target_modules: [...cfg.lora.target_modules] }; // no dropout: rollout and update log-probs must agree
      const init = resumeDir ? loadAdapter(resumeDir).lora : initLora(config, acfg, cfg.train.seed);
      adapter = toVariables(init);
      trainable = { ...adapter };
      policyParams = { ...sft.params, ...adapter };
      Object.assign(policyFwd, { loraScale: loraScale(acfg), freezeBase: true });
    } else {
      const start = resumeDir ? loadCheckpoint(resumeDir).params : Object.fromEntries(Object.entries(sft.params).map(([k, t]) => [k, tf.clone(t)]));
      trainable = toVariables(start);
      policyParams = { ...trainable }; // (trainable grows by the value model below)
    }
    variables.push(...Object.values(trainable));
    // Reward: a rule on the text, or a frozen reward model (same tokenizer: scored on our token ids).
    let rm: RewardModel | undefined;
    if (cfg.reward.type === 'model' && !o.reward) {
      rm = loadRewardModel(cfg.reward.path);
      owned.push(rm.params);
      if (!cfg.reward.retokenize && !sameTokenizer(rm.tokenizer, tokenizer)) {
        throw new Error(`${cfg.reward.path}: reward: the reward model's tokenizer differs from the policy's (${cfg.policy}); set reward.retokenize: true to score the decoded text with its own tokenizer`);
      }
    }
    // Value model (ppo): a head on the policy trunk, or a separate trunk + head initialised from the reward
    // model (TRL's default), from value.init_from, or from the policy (a rule reward has no model).
    let valueParams: Params | undefined, valueConfig: ModelConfig = config, vHead: { w: tf.Tensor2D; b: tf.Tensor1D } | undefined;
    if (isPpo) {
      const saved = resumeDir && existsSync(join(resumeDir, VALUE_HEAD_FILE)) ? readTensorFile(join(resumeDir, VALUE_HEAD_FILE)) : undefined;
      if (resumeDir && !saved) throw new Error(`${resumeDir}: no ${VALUE_HEAD_FILE}; cannot resume the value model`);
      const init: Params = {};
      if (!cfg.value.shared) {
        const start = valueInit(cfg.value.init_from ?? rm?.dir ?? cfg.policy, { rm, policy: sft });
        if (!sameTokenizer(start.tokenizer, tokenizer)) {
          disposeParams(start.params);
          throw new Error(`${start.dir}: value.init_from: its tokenizer differs from the policy's (${cfg.policy})`);
        }
        valueConfig = start.config;
        for (const [name, t] of Object.entries(start.params)) init[VALUE_TRUNK_PREFIX + name] = t;
        if (start.head) init['v_head.weight'] = start.head;
      }
      init['v_head.weight'] ??= tf.zeros([valueConfig.n_embd, 1]);
      init['v_head.bias'] = tf.zeros([1]);
      if (saved) {
        for (const [k, t] of Object.entries(init)) {
          if (!saved[k]) {
            disposeParams(init);
            disposeParams(saved);
            throw new Error(`${join(resumeDir!, VALUE_HEAD_FILE)}: missing tensor '${k}' (was the run started with another value setting?)`);
          }
          t.dispose();
          init[k] = saved[k]!;
        }
      }
      const vars = toVariables(init);
      Object.assign(trainable, vars);
      variables.push(...Object.values(vars));
      vHead = { w: vars['v_head.weight'] as tf.Tensor2D, b: vars['v_head.bias'] as tf.Tensor1D };
      if (!cfg.value.shared) valueParams = Object.fromEntries(Object.entries(vars).filter(([k]) => k.startsWith(VALUE_TRUNK_PREFIX)).map(([k, v]) => [k.slice(VALUE_TRUNK_PREFIX.length), v]));
    }
    const policyModel: LanguageModel = { params: policyParams, config, tokenizer };
    const trainableParams = Object.values(trainable).reduce((n, v) => n + v.size, 0);
    log().info({ algorithm: cfg.algorithm, policy: cfg.policy, params: countParams(config), trainable: trainableParams, lora: Boolean(cfg.lora), value: isPpo ? (cfg.value.shared ? 'shared' : 'separate') : 'none', resume: Boolean(resumeDir) }, cfg.algorithm);

    // ---- data, reward
    const prompts = loadPrompts(cfg, tokenizer, config.n_ctx);
    if (prompts.train.length === 0) throw new Error(`${cfg.prompts.path}: no training prompts left after holding out eval_fraction ${cfg.prompts.eval_fraction}`);
    const rule = o.reward ?? (rm ? undefined : ruleReward(cfg.reward as RuleRewardConfig));
    const rmOnOurTokens = rm !== undefined && sameTokenizer(rm.tokenizer, tokenizer);
    /** Scores of a rollout's responses: the rule on the text, or the reward model at the last token. */
    const scoreRollout = (roll: Rollout, prompts: readonly Prompt[], infos: ResponseInfo[]): number[] => {
      if (rule) return infos.map(rule);
      if (rmOnOurTokens) return scoreSequences(rm!, roll.prompts.map((p, i) => [...p, ...roll.responses[i]!]), chunk);
      return scoreConversations(rm!, infos.map((info, i) => ({ prompt: promptMessages(prompts[i]!), response: info.text })), chunk);
    };
    const stopIds = new Set(stopTokenIds(tokenizer));
    const responseInfo = (ids: number[]) => {
      const body = ids.length && stopIds.has(ids.at(-1)!) ? ids.slice(0, -1) : ids;
      return { text: tokenizer.decode(body, { skipSpecial: true }), tokens: body.length };
    };
    const G = isPpo ? 1 : cfg.rollout.group_size;
    const sampling = { temperature: cfg.rollout.temperature, top_k: cfg.rollout.top_k, top_p: cfg.rollout.top_p, repetition_penalty: 1, max_new_tokens: cfg.rollout.max_new_tokens };
    const T = cfg.rollout.temperature, chunk = cfg.ppo.mini_batch_size;

    /** Held-out evaluation: sample with a fixed seed, so evaluations at different steps are comparable. */
    const evaluate = (): EvalResult | undefined => {
      const set = prompts.eval.slice(0, cfg.train.eval_prompts);
      if (set.length === 0) return undefined;
      const rng = new Rng(cfg.train.seed + 99991);
      const scores: number[] = [], kls: number[] = [], lens: number[] = [], eos: number[] = [];
      for (let s = 0; s < set.length; s += cfg.rollout.batch_size) {
        const roll = sampleRollout(policyModel, set.slice(s, s + cfg.rollout.batch_size).map((p) => p.ids), { ...sampling, rng, forward: policyFwd });
        const lp = chunked(roll, chunk, (b) => ({
          pol: responseForward(policyParams, config, roll, b, { temperature: T, forward: policyFwd }).logp,
          ref: responseForward(reference, config, roll, b, { temperature: T, forward: refFwd }).logp,
        }));
        kls.push(...rowSums(lp.pol.map((r, i) => r.map((v, t) => v - lp.ref[i]![t]!)), roll.mask));
        const infos = roll.responses.map(responseInfo);
        scores.push(...scoreRollout(roll, set.slice(s, s + cfg.rollout.batch_size).map((p) => p.prompt), infos));
        lens.push(...infos.map((i) => i.tokens));
        eos.push(...roll.finished.map((f) => (f ? 1 : 0)));
      }
      return { score: mean(scores), kl: mean(kls), eos: mean(eos), length: mean(lens), prompts: set.length };
    };

    // ---- optimizer, state
    const optimizer = new AdamW(trainable, cfg.optim);
    const rng = new Rng(String(resume?.state.rng_state ?? cfg.train.seed));
    let step = resume?.state.step ?? 0;
    let tokensSeen = resume?.state.tokens_seen ?? 0;
    let lastLoss = resume?.state.last_loss ?? NaN;
    const saved = resume?.state.data_cursor as Cursor | undefined;
    const cursor: Cursor = saved ? { ...saved } : { epoch: 0, pos: 0, kl_coef: cfg.ppo.kl.coef, updates: 0 };
    const kl = new KlController(cursor.kl_coef, cfg.ppo.kl.target, cfg.ppo.kl.horizon);
    if (resume) optimizer.loadState(resume.optimizer, cursor.updates); // Adam's bias correction counts updates, not steps
    let order = promptOrder(prompts.train.length, cfg.train.seed, cursor.epoch);
    mkdirSync(cfg.out_dir, { recursive: true });
    const metricsLog = join(cfg.out_dir, METRICS_FILE), samplesLog = join(cfg.out_dir, SAMPLES_FILE);
    truncateMetrics(metricsLog, step);
    truncateMetrics(samplesLog, step);
    const record = (path: string, entry: Record<string, unknown>) => appendFileSync(path, JSON.stringify({ ...entry, time: new Date().toISOString() }) + '\n');
    let lr = 0, metrics: Record<string, number> = {};
    const timing = { rollout: 0, score: 0, update: 0, tokens: 0, steps: 0 };

    const save = async (why: string) => {
      const state: TrainerState = {
        step,
        tokens_seen: tokensSeen,
        rng_state: rng.getState(),
        lr,
        data_cursor: { ...cursor, kl_coef: kl.value, updates: optimizer.step },
        ...(Number.isFinite(lastLoss) ? { last_loss: lastLoss } : {}),
        schedule: { kind: cfg.optim.schedule, peak_lr: cfg.optim.lr, min_lr: cfg.optim.min_lr, warmup_steps: cfg.optim.warmup_steps, total_steps: cfg.train.max_steps },
      };
      const valueTensors: Params = {};
      for (const [k, v] of Object.entries(trainable)) if (k.startsWith(VALUE_TRUNK_PREFIX) || k.startsWith('v_head.')) valueTensors[k] = v;
      const valueData = isPpo ? await toTensorData(valueTensors) : undefined;
      await saveCheckpoint(cfg.out_dir, {
        config,
        params: adapter ? {} : policyParams,
        skipModel: Boolean(adapter),
        tokenizer,
        stage: cfg.algorithm,
        stageConfig: cfg,
        parentDir: cfg.policy,
        metrics: { ...metrics, step },
        trainer: { state, optimizer: optimizer.stateTensors(), metricsLog },
        extra: (tmp) => {
          if (adapter) saveAdapter(tmp, adapter, acfg!, cfg.policy, config);
          if (valueData) writeSafetensors(join(tmp, VALUE_HEAD_FILE), valueData, { format: 'pt', producer: 'llmctl', value: cfg.value.shared ? 'head on the policy trunk' : 'separate trunk (value_model.*) + head' });
          if (existsSync(samplesLog)) copyFileSync(samplesLog, join(tmp, SAMPLES_FILE));
        },
      });
      progress?.note(`checkpoint saved (${why})`, { step, dir: cfg.out_dir });
    };

    let stopRequested = false;
    const onSigint = () => {
      if (stopRequested) process.exit(130);
      stopRequested = true;
      log().warn('SIGINT: finishing this step, saving a checkpoint, then exiting (Ctrl-C again to abort)');
    };
    process.on('SIGINT', onSigint);
    const progress = o.quiet ? undefined : new Progress(cfg.algorithm, cfg.train.max_steps);
    const startStep = step;
    const evalStart = evaluate();
    if (evalStart) record(metricsLog, { step, ...prefixed('eval', evalStart) });

    try {
      while (step < cfg.train.max_steps) {
        lr = learningRate(step, cfg.train.max_steps, cfg.optim);
        // ---- prompts of this step (each repeated G times under GRPO)
        const batch: EncodedPrompt[] = [];
        while (batch.length < cfg.rollout.batch_size) {
          if (cursor.pos >= order.length) {
            cursor.epoch += 1;
            cursor.pos = 0;
            order = promptOrder(prompts.train.length, cfg.train.seed, cursor.epoch);
          }
          batch.push(prompts.train[order[cursor.pos++]!]!);
        }
        const promptIds = batch.flatMap((p) => Array.from({ length: G }, () => p.ids));

        // ---- rollout
        let t0 = performance.now();
        const roll = sampleRollout(policyModel, promptIds, { ...sampling, rng, forward: policyFwd });
        const tRollout = (performance.now() - t0) / 1000;
        const N = promptIds.length, responseTokens = roll.responses.reduce((n, r) => n + r.length, 0);

        // ---- score: log-probs of policy and reference, values, rewards (no gradient)
        t0 = performance.now();
        const sc = chunked(roll, chunk, (b) => {
          const pol = responseForward(policyParams, config, roll, b, { temperature: T, forward: policyFwd, entropy: true, hidden: isPpo && cfg.value.shared });
          const ref = responseForward(reference, config, roll, b, { temperature: T, forward: refFwd });
          const values = isPpo ? valueHead(pol.hidden ?? responseForward(valueParams!, valueConfig, roll, b, { temperature: T, hidden: true }).hidden!, vHead!.w, vHead!.b) : undefined;
          const estimate = klEstimate(pol.logp, ref.logp, isPpo ? cfg.ppo.kl.estimator : 'k3') as tf.Tensor2D;
          return { logp: pol.logp, ref: ref.logp, entropy: pol.entropy, values, kl: estimate };
        });
        const infos = roll.responses.map(responseInfo);
        const rawScores = scoreRollout(roll, batch.flatMap((p) => Array.from({ length: G }, () => p.prompt)), infos);
        const scores = rawScores.map((s, i) => {
          let r = s - (!roll.finished[i] && cfg.rollout.missing_eos_penalty !== undefined ? cfg.rollout.missing_eos_penalty : 0);
          if (cfg.ppo.reward_clip !== undefined) r = Math.max(-cfg.ppo.reward_clip, Math.min(cfg.ppo.reward_clip, r));
          return r;
        });
        const bad = scores.findIndex((s) => !Number.isFinite(s));
        if (bad >= 0) throw new NonFiniteLossError(`non-finite reward (${scores[bad]}) at step ${step + 1} for response ${JSON.stringify(infos[bad]!.text.slice(0, 60))}; stopped without saving. The last good checkpoint (if any) is in ${cfg.out_dir}.`);
        const beta = kl.value;
        const klSums = rowSums(sc.kl, roll.mask);
        let advantages: number[][], returns: number[][] | undefined;
        if (isPpo) {
          let rewards = shapeRewards(scores, sc.kl, roll.mask, beta);
          if (cfg.ppo.whiten_rewards) rewards = whiten(rewards, roll.mask, false);
          const g = gae(rewards, sc.values!, roll.mask, cfg.ppo.gamma, cfg.ppo.lam);
          advantages = whiten(g.advantages, roll.mask);
          returns = g.returns;
        } else {
          const a = groupAdvantages(scores, G);
          advantages = roll.mask.map((m, i) => m.map((x) => x * a[i]!));
        }
        const tScore = (performance.now() - t0) / 1000;

        // ---- update: epochs over shuffled mini-batches
        t0 = performance.now();
        const stats: Record<string, number[]> = { approxkl: [], clipfrac: [], pg: [], vf: [], vfclip: [], ratio: [], loss: [] };
        const varList = variables;
        const paramOfVar = new Map(Object.entries(trainable).map(([name, v]) => [v.name, name]));
        for (let epoch = 0; epoch < cfg.ppo.epochs; epoch++) {
          const perm = shuffle(N, rng);
          let stopEpoch = false;
          for (let s = 0, mb = 0; s < N && !stopEpoch; s += chunk, mb++) {
            const rows = perm.slice(s, s + chunk);
            const pick = (x: number[][]) => pickRows(x, rows);
            const out: Record<string, tf.Scalar> = {};
            const b = rowBatch(roll, rows); // outside variableGrads: the backward pass reads its token ids
            const { value, grads } = tf.variableGrads(() => {
              const mask = pick(roll.mask), oldLogp = pick(sc.logp), adv = pick(advantages);
              const pol = responseForward(policyParams, config, roll, b, { temperature: T, forward: policyFwd, hidden: isPpo && cfg.value.shared });
              out.maxAbsLogRatio = tf.keep(tf.max(tf.abs(tf.mul(tf.sub(pol.logp, oldLogp), mask))) as tf.Scalar);
              let loss: tf.Scalar;
              if (isPpo) {
                const pg = ppoPolicyLoss(pol.logp, oldLogp, adv, mask, cfg.ppo.cliprange);
                const hidden = pol.hidden ?? responseForward(valueParams!, valueConfig, roll, b, { temperature: T, hidden: true }).hidden!;
                const vf = clippedValueLoss(valueHead(hidden, vHead!.w, vHead!.b), pick(sc.values!), pick(returns!), mask, cfg.ppo.cliprange_value);
                Object.assign(out, { pg: tf.keep(pg.loss), clipfrac: tf.keep(pg.clipfrac), approxkl: tf.keep(pg.approxKl), ratio: tf.keep(pg.ratio), vf: tf.keep(vf.loss), vfclip: tf.keep(vf.clipfrac) });
                loss = tf.add(pg.loss, tf.mul(cfg.ppo.vf_coef, vf.loss)) as tf.Scalar;
              } else {
                const g = grpoLoss(pol.logp, oldLogp, pick(sc.ref), adv, mask, cfg.ppo.cliprange, beta);
                Object.assign(out, { pg: tf.keep(g.loss), clipfrac: tf.keep(g.clipfrac), approxkl: tf.keep(g.approxKl), ratio: tf.keep(g.ratio) });
                loss = g.loss;
              }
              return loss;
            }, varList);
            disposeRowBatch(b);
            const lossValue = value.dataSync()[0]!;
            const read: Record<string, number> = {};
            for (const [k, t] of Object.entries(out)) read[k] = t.dataSync()[0]!;
            tf.dispose([...new Set([value, ...Object.values(out)])]); // GRPO's loss is also out.pg
            const named: Record<string, tf.Tensor> = {};
            for (const [k, g] of Object.entries(grads)) named[paramOfVar.get(k) ?? k] = g;
            const gradNorm = Number.isFinite(lossValue) ? clipGradNorm(named, cfg.optim.grad_clip) : NaN;
            if (!Number.isFinite(lossValue) || !Number.isFinite(gradNorm)) {
              tf.dispose(Object.values(named));
              throw new NonFiniteLossError(`non-finite ${Number.isFinite(lossValue) ? 'gradient norm' : 'loss'} at step ${step + 1}; stopped without saving. The last good checkpoint (if any) is in ${cfg.out_dir}. Try a lower optim.lr.`);
            }
            optimizer.apply(named, lr);
            for (const k of Object.keys(stats)) if (read[k] !== undefined) stats[k]!.push(read[k]!);
            stats.loss!.push(lossValue);
            o.onUpdate?.({ step: step + 1, epoch, minibatch: mb, ratio: read.ratio!, clipfrac: read.clipfrac!, approxKl: read.approxkl!, maxAbsLogRatio: read.maxAbsLogRatio! });
            if (cfg.ppo.max_approx_kl !== undefined && read.approxkl! > cfg.ppo.max_approx_kl) stopEpoch = true;
          }
        }
        const tUpdate = (performance.now() - t0) / 1000;

        // ---- bookkeeping
        step += 1;
        tokensSeen += responseTokens;
        lastLoss = mean(stats.loss!);
        const meanKl = mean(klSums);
        kl.update(meanKl, N);
        const nonScore = isPpo ? mean(klSums.map((k) => -beta * k)) : 0;
        metrics = {
          'objective/kl': meanKl,
          'objective/entropy': mean(rowSums(sc.logp.map((r) => r.map((v) => -v)), roll.mask)),
          'objective/non_score_reward': nonScore,
          'objective/rlhf_reward': mean(scores) + nonScore,
          'objective/scores': mean(scores),
          'policy/approxkl_avg': mean(stats.approxkl!),
          'policy/clipfrac_avg': mean(stats.clipfrac!),
          'policy/entropy_avg': rowSums(sc.entropy!, roll.mask).reduce((a, b) => a + b, 0) / Math.max(1, responseTokens),
          'loss/policy_avg': mean(stats.pg!),
          ...(isPpo ? { 'loss/value_avg': mean(stats.vf!), 'val/clipfrac_avg': mean(stats.vfclip!) } : {}),
          'val/ratio': mean(stats.ratio!),
          'val/num_eos_tokens': roll.finished.filter(Boolean).length,
          'val/response_length': responseTokens / N,
          kl_coef: beta,
          lr,
          updates: stats.loss!.length,
          'time/rollout': tRollout,
          'time/score': tScore,
          'time/update': tUpdate,
          'time/rollout_tokens_per_s': responseTokens / tRollout,
        };
        record(metricsLog, { step, ...metrics });
        if (step % cfg.train.sample_every === 0 || step === 1) {
          record(samplesLog, { step, prompt: promptText(batch[0]!.prompt), response: infos[0]!.text, reward: scores[0], score: rawScores[0] });
        }
        timing.rollout += tRollout;
        timing.score += tScore;
        timing.update += tUpdate;
        timing.tokens += responseTokens;
        timing.steps += 1;
        o.onStep?.(step, metrics);
        progress?.update(step, { score: metrics['objective/scores']!, kl: meanKl, beta, 'tok/s': Math.round(responseTokens / tRollout) }, startStep);
        if (cfg.train.eval_every > 0 && step % cfg.train.eval_every === 0 && step !== cfg.train.max_steps) {
          const ev = evaluate();
          if (ev) record(metricsLog, { step, ...prefixed('eval', ev) });
        }
        if (stopRequested) {
          await save('interrupted');
          return finish(true);
        }
        if (cfg.train.save_every > 0 && step % cfg.train.save_every === 0 && step !== cfg.train.max_steps) await save('periodic');
        await new Promise((r) => setImmediate(r));
      }
      const evalEnd = evaluate();
      if (evalEnd) record(metricsLog, { step, ...prefixed('eval', evalEnd) });
      metrics = { ...metrics, ...(evalEnd ? prefixed('eval', evalEnd) : {}) };
      await save('final');
      return finish(false, evalEnd);
    } catch (err) {
      progress?.fail(`${cfg.algorithm} stopped at step ${step}`);
      throw err;
    } finally {
      process.off('SIGINT', onSigint);
      o.inspect?.({ policy: policyParams, reference, value: vHead ? { ...valueParams, 'v_head.weight': vHead.w, 'v_head.bias': vHead.b } : undefined, reward: rm?.params });
      optimizer.dispose();
    }

    function finish(interrupted: boolean, evalEnd?: EvalResult): PpoResult {
      const n = Math.max(1, timing.steps);
      progress?.done(`${cfg.algorithm}: ${step} steps, score ${fmt(metrics['objective/scores'])}, kl ${fmt(metrics['objective/kl'])}`);
      return {
        step,
        interrupted,
        metrics,
        evalStart,
        evalEnd,
        trainableParams,
        timing: { rollout: timing.rollout / n, score: timing.score / n, update: timing.update / n, rolloutTokensPerSecond: timing.tokens / Math.max(1e-9, timing.rollout) },
        prompts: { train: prompts.train.length, eval: prompts.eval.length },
      };
    }
  } finally {
    for (const v of variables) v.dispose();
    const seen = new Set<tf.Tensor>();
    for (const p of owned) for (const t of Object.values(p)) if (!seen.has(t)) {
      seen.add(t);
      t.dispose();
    }
  }
}

/**
 * Fresh tensors for a separate value model: the trunk of `dir` and, when it has one, its reward head
 * (score.weight [1, d] → v_head.weight [d, 1]). The reward model already in memory (a full checkpoint or a
 * LoRA reward adapter, merged here) and the policy are copied rather than read again.
 */
function valueInit(dir: string, have: { rm?: RewardModel; policy: LoadedCheckpoint }): { dir: string; params: Params; config: ModelConfig; tokenizer: Tokenizer; head?: tf.Tensor } {
  const clone = (p: Params) => Object.fromEntries(Object.entries(p).map(([k, t]) => [k, tf.clone(t)]));
  if (have.rm && dir === have.rm.dir) {
    const { [SCORE]: score, ...rest } = have.rm.params;
    const lora = Object.fromEntries(Object.entries(rest).filter(([k]) => k.includes('.lora_')));
    const base = Object.fromEntries(Object.entries(rest).filter(([k]) => !k.includes('.lora_')));
    const params = Object.keys(lora).length ? mergeAdapter(base, lora, have.rm.fwd.loraScale ?? 1) : clone(base);
    return { dir, params, config: have.rm.config, tokenizer: have.rm.tokenizer, head: tf.transpose(score!) };
  }
  if (dir === have.policy.dir) return { dir, params: clone(have.policy.params), config: have.policy.config, tokenizer: have.policy.tokenizer };
  const ck = loadCheckpoint(dir, { heads: true });
  const score = ck.heads?.[SCORE];
  const head = score ? tf.transpose(score) : undefined;
  score?.dispose();
  return { dir, params: ck.params, config: ck.config, tokenizer: ck.tokenizer, head };
}

function shuffle(n: number, rng: Rng): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

function prefixed(prefix: string, r: EvalResult): Record<string, number> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [`${prefix}/${k}`, v]));
}

function fmt(v: number | undefined): string {
  return v === undefined ? '?' : v.toFixed(4);
}

