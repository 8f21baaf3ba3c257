/**
 * Rule-based (verifiable) rewards: a score from the response text alone, so PPO and GRPO can run
 * without a reward model (DeepSeekMath / R1-style "accuracy" and "format" rewards).
 */
import type { RewardConfig } from '../config/ppo.js';

export type RuleRewardConfig = Exclude<RewardConfig, { type: 'model' }>;

/** What a rule sees of one rollout. */
export interface ResponseInfo {
  text: string; // decoded response, special tokens removed
  tokens: number; // response tokens, the stop token excluded
}

export function ruleReward(cfg: RuleRewardConfig): (r: ResponseInfo) => number {
  switch (cfg.type) {
    case 'regex': {
      let re: RegExp;
      try {
        re = new RegExp(cfg.pattern, cfg.flags);
      } catch (err) {
        throw new Error(`reward.pattern: ${(err as Error).message}`);
      }
      return (r) => {
        re.lastIndex = 0; // a /g or /y pattern remembers where it stopped
        return re.test(r.text) ? cfg.score : 0;
      };
    }
    case 'contains': {
      const texts = (Array.isArray(cfg.text) ? cfg.text : [cfg.text]).map((t) => (cfg.case_sensitive ? t : t.toLowerCase()));
      return (r) => {
        const hay = cfg.case_sensitive ? r.text : r.text.toLowerCase();
        return texts.some((t) => hay.includes(t)) ? cfg.score : 0;
      };
    }
    case 'length':
      return (r) => 0 - Math.abs((cfg.unit === 'chars' ? r.text.length : r.tokens) - cfg.target) / cfg.target; // (0 −: no −0)
  }
}
