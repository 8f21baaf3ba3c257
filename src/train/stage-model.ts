/**
 * The trainable model of an alignment stage (rm, dpo), full or LoRA, with its save: one place so both
 * stages start, resume and write the same way as sft / lora.
 *
 *  full: every transformer weight is a tf.Variable (loaded from base, or from out_dir on resume);
 *        saved as a full checkpoint.
 *  LoRA: the base stays plain tensors (forward with freezeBase) and only `<module>.lora_A/B` train;
 *        saved as a PEFT adapter dir, never the base weights. `frozenBase` is the base without the
 *        adapter: DPO's reference with no second copy of the weights.
 *  head: a reward model's `score.weight` trains in both modes (fresh, or from the checkpoint on resume).
 */
import type * as tf from '@tensorflow/tfjs-core';
import { type LoadedCheckpoint, type SaveOptions, disposeParams, loadCheckpoint, saveCheckpoint, toVariables } from '../checkpoint/model.js';
import type { LoraAdapterSchema } from '../config/stages.js';
import { initScoreHead, SCORE } from '../align/reward.js';
import { type ForwardOptions, type ModelConfig, type Params, countParams } from '../model/gpt.js';
import { type LoraConfig, initLora, loadAdapter, loraScale, saveAdapter, targetModules } from '../model/lora.js';
import type { Tokenizer } from '../tokenizer/index.js';
import type { z } from 'zod';

export interface StageModel {
  config: ModelConfig;
  tokenizer: Tokenizer;
  /** What the optimizer updates. */
  trainable: Record<string, tf.Variable>;
  /** Everything the forward reads (base + adapter + head). */
  params: Params;
  /** LoRA only: the base without adapter entries. */
  frozenBase?: Params;
  fwd: ForwardOptions;
  lora?: LoraConfig;
  trainableParams: number;
  baseParams: number;
  /** Write out_dir atomically through the one checkpoint writer. */
  save(outDir: string, o: Pick<SaveOptions, 'stage' | 'stageConfig' | 'parentDir' | 'metrics' | 'trainer' | 'extra' | 'inputs'>): Promise<void>;
  dispose(): void;
}

export function adapterSettings(l: z.output<typeof LoraAdapterSchema>): LoraConfig {
  return { r: l.r, alpha: l.alpha, dropout: l.dropout, target_modules: [...l.target_modules] };
}

export function loadStageModel(o: { base: string; lora?: z.output<typeof LoraAdapterSchema>; seed: number; resumeDir?: string; head: boolean }): StageModel {
  return o.lora ? loraModel(o, adapterSettings(o.lora)) : fullModel(o);
}

function fullModel(o: { base: string; seed: number; resumeDir?: string; head: boolean }): StageModel {
  const ck = loadCheckpoint(o.resumeDir ?? o.base, { heads: o.head });
  const { config, tokenizer } = ck;
  const initial: Params = { ...ck.params };
  if (o.head) initial[SCORE] = ck.heads?.[SCORE] ?? initScoreHead(config, o.seed);
  const trainable = toVariables(initial);
  const n = Object.values(trainable).reduce((a, v) => a + v.size, 0);
  const split = () => {
    const params: Params = {}, heads: Params = {};
    for (const [k, v] of Object.entries(trainable)) (k === SCORE ? heads : params)[k] = v;
    return { params, heads };
  };
  return {
    config,
    tokenizer,
    trainable,
    params: trainable,
    fwd: {},
    trainableParams: n,
    baseParams: countParams(config),
    save: (outDir, s) => saveCheckpoint(outDir, { config, tokenizer, ...split(), ...s }),
    dispose: () => disposeParams(trainable),
  };
}

function loraModel(o: { base: string; seed: number; resumeDir?: string; head: boolean }, acfg: LoraConfig): StageModel {
  const base: LoadedCheckpoint = loadCheckpoint(o.base);
  const { config, tokenizer } = base;
  let initial: Params;
  try {
    const modules = targetModules(config, acfg);
    if (o.resumeDir) {
      const saved = loadAdapter(o.resumeDir);
      initial = { ...saved.lora, ...saved.heads };
      const want = new Set([...modules.flatMap((m) => [`${m}.lora_A`, `${m}.lora_B`]), ...(o.head ? [SCORE] : [])]);
      const got = Object.keys(initial);
      if (saved.config.r !== acfg.r || got.length !== want.size || got.some((k) => !want.has(k))) {
        disposeParams(initial);
        throw new Error(`${o.resumeDir}: the saved adapter (r=${saved.config.r}, ${Object.keys(saved.lora).length / 2} modules) does not match the lora settings in the config (r=${acfg.r}, ${modules.length} modules); cannot resume`);
      }
    } else {
      initial = initLora(config, acfg, o.seed);
      if (o.head) initial[SCORE] = initScoreHead(config, o.seed);
    }
  } catch (err) {
    disposeParams(base.params);
    throw err;
  }
  const trainable = toVariables(initial);
  const adapter = () => Object.fromEntries(Object.entries(trainable).filter(([k]) => k !== SCORE));
  const heads = () => Object.fromEntries(Object.entries(trainable).filter(([k]) => k === SCORE));
  return {
    config,
    tokenizer,
    trainable,
    params: { ...base.params, ...trainable },
    frozenBase: base.params,
    fwd: { loraScale: loraScale(acfg), loraDropout: acfg.dropout, freezeBase: true },
    lora: acfg,
    trainableParams: Object.values(trainable).reduce((a, v) => a + v.size, 0),
    baseParams: countParams(config),
    save: (outDir, s) =>
      saveCheckpoint(outDir, {
        config,
        tokenizer,
        params: {},
        skipModel: true,
        ...s,
        extra: async (tmp) => {
          saveAdapter(tmp, adapter(), acfg, o.base, config, heads());
          await s.extra?.(tmp);
        },
      }),
    dispose: () => {
      disposeParams(trainable);
      disposeParams(base.params);
    },
  };
}
