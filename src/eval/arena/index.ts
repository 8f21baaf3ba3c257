/**
 * `llmctl arena` as a library call: each model answers each prompt, answers are paired, a judge (reward
 * model, human, or an existing battles file) decides, and the battles are rated (online Elo, Bradley–Terry
 * with bootstrap intervals, win rates). Writes answers, battles, ratings.json and arena.svg to out_dir.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { generate } from '../../model/generate.js';
import { loadForInference } from '../../model/lora.js';
import { promptIds } from '../../model/prompt.js';
import { Progress, log } from '../../util/log.js';
import { DataError, readJsonl, readText } from '../read.js';
import { writeFileAtomic } from '../results.js';
import { type BattleRecord, readBattles } from './battles.js';
import { arenaChartSvg, loadECharts } from './chart.js';
import { type AnswerPair, judgeByHuman, judgeWithRewardModel, loadRewardModel } from './judge.js';
import { type Battle, type EloOptions, type Interval, bootstrap, bradleyTerry, modelsOf, onlineElo, winRates } from './ratings.js';

export interface ArenaConfig {
  models: Record<string, string>;
  prompts?: string;
  judge: string;
  out_dir: string;
  chat: boolean | string[];
  sampling: { max_tokens: number; temperature: number; top_k: number; top_p: number; repetition_penalty: number; stop: string[]; seed?: number };
  margin: number;
  bootstrap_rounds: number;
  seed: number;
  elo: EloOptions;
}

export interface Standing {
  model: string;
  bt: Interval;
  elo: Interval;
  battles: number;
  wins: number;
  ties: number;
  losses: number;
}

export interface ArenaResult {
  standings: Standing[];
  winRate: { models: string[]; winRate: number[][]; counts: number[][] };
  battles: number;
  files: Record<string, string>;
  chartSkipped?: string;
}

export function parseJudge(spec: string): { kind: 'rm' | 'human' | 'battles'; path?: string } {
  if (spec === 'human') return { kind: 'human' };
  const m = /^(rm|battles):(.+)$/.exec(spec);
  if (!m) throw new DataError(`judge: '${spec}' is not rm:DIR, human or battles:FILE`);
  return { kind: m[1] as 'rm' | 'battles', path: m[2]! };
}

/** JSONL rows with a prompt / instruction / question / text field, or a text file with one prompt per line. */
export function readPrompts(path: string): string[] {
  if (/\.jsonl(\.gz)?$/.test(path)) {
    return readJsonl(path).map(({ row, line }) => {
      const p = row.prompt ?? row.instruction ?? row.question ?? row.text;
      if (typeof p !== 'string' || !p) throw new DataError(`${path}:${line}: no 'prompt' (or instruction / question / text) field`);
      return typeof row.input === 'string' && row.input ? `${p}\n\n${row.input}` : p;
    });
  }
  const prompts = readText(path).split('\n').map((l) => l.trim()).filter(Boolean);
  if (!prompts.length) throw new DataError(`${path}: no prompts`);
  return prompts;
}

function chatFor(cfg: ArenaConfig, model: string): boolean {
  return Array.isArray(cfg.chat) ? cfg.chat.includes(model) : cfg.chat;
}

/** Every model's answer to every prompt (cached in out_dir/answers/<model>.jsonl, so a resumed arena reuses them). */
function answers(cfg: ArenaConfig, prompts: string[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  mkdirSync(join(cfg.out_dir, 'answers'), { recursive: true });
  for (const [name, dir] of Object.entries(cfg.models)) {
    const cache = join(cfg.out_dir, 'answers', `${name}.jsonl`);
    const chat = chatFor(cfg, name);
    if (existsSync(cache)) {
      const rows = readJsonl(cache).map(({ row }) => row as { prompt: string; answer: string; chat?: boolean });
      if (rows.length === prompts.length && rows.every((r, i) => r.prompt === prompts[i] && (r.chat ?? false) === chat)) {
        out[name] = rows.map((r) => r.answer);
        log().info({ model: name, cache }, 'arena: reusing answers');
        continue;
      }
    }
    const { model, scale, dispose } = loadForInference(dir);
    const progress = new Progress(`arena: ${name} answering`, prompts.length);
    try {
      out[name] = prompts.map((p, i) => {
        const g = generate(model, promptIds(model.tokenizer, p, chat), { ...cfg.sampling, seed: (cfg.sampling.seed ?? cfg.seed) + i, forward: scale !== undefined ? { loraScale: scale } : undefined });
        progress.update(i + 1, { tokens: g.ids.length });
        return g.text.trim();
      });
    } finally {
      dispose();
    }
    progress.done(`arena: ${name} answered ${prompts.length} prompts`);
    writeFileAtomic(cache, out[name]!.map((a, i) => JSON.stringify({ prompt: prompts[i], chat, answer: a })).join('\n') + '\n');
  }
  return out;
}

export function pairsOf(prompts: string[], ans: Record<string, string[]>): AnswerPair[] {
  const models = Object.keys(ans);
  const pairs: AnswerPair[] = [];
  prompts.forEach((prompt, q) => {
    for (let i = 0; i < models.length; i++) for (let j = i + 1; j < models.length; j++) {
      pairs.push({ question_id: q, prompt, model_a: models[i]!, model_b: models[j]!, answer_a: ans[models[i]!]![q]!, answer_b: ans[models[j]!]![q]! });
    }
  });
  return pairs;
}

/** Ratings, intervals, win rates and battle counts from a list of battles. */
export function rate(battles: Battle[], o: Pick<ArenaConfig, 'elo' | 'bootstrap_rounds' | 'seed'>): Omit<ArenaResult, 'files'> {
  if (!battles.length) throw new DataError('arena: no battles to rate');
  const models = modelsOf(battles);
  if (models.length < 2) throw new DataError('arena: need battles between at least two models');
  const bt = bootstrap(battles, (b) => bradleyTerry(b, o.elo), o.bootstrap_rounds, o.seed);
  const elo = bootstrap(battles, (b) => onlineElo(b, o.elo), o.bootstrap_rounds, o.seed);
  const standings = models.map((m) => {
    const mine = battles.filter((b) => b.model_a === m || b.model_b === m);
    const wins = mine.filter((b) => (b.winner === 'model_a' && b.model_a === m) || (b.winner === 'model_b' && b.model_b === m)).length;
    const ties = mine.filter((b) => b.winner === 'tie' || b.winner === 'tie (bothbad)').length;
    return { model: m, bt: bt[m]!, elo: elo[m]!, battles: mine.length, wins, ties, losses: mine.length - wins - ties };
  }).sort((a, b) => b.bt.rating - a.bt.rating);
  return { standings, winRate: winRates(battles), battles: battles.length };
}

export interface ArenaIo {
  input: Readable;
  output: Writable;
  columns?: number;
}

export async function runArena(cfg: ArenaConfig, io: ArenaIo): Promise<ArenaResult & { quit?: boolean }> {
  const judge = parseJudge(cfg.judge);
  mkdirSync(cfg.out_dir, { recursive: true });
  const files: Record<string, string> = {};
  let battles: BattleRecord[], quit: boolean | undefined;
  if (judge.kind === 'battles') {
    battles = readBattles(judge.path!);
    files.battles = judge.path!;
  } else {
    if (!cfg.prompts) throw new DataError('prompts: give a prompts file (JSONL with "prompt", or one prompt per line) for the models to answer');
    if (Object.keys(cfg.models).length < 2) throw new DataError('models: need at least two, as name=DIR,name=DIR');
    const prompts = readPrompts(cfg.prompts);
    const rm = judge.kind === 'rm' ? loadRewardModel(judge.path!) : undefined; // fail on a bad judge before generating
    try {
      const pairs = pairsOf(prompts, answers(cfg, prompts));
      if (rm) {
        battles = judgeWithRewardModel(pairs, rm, cfg.margin);
        files.battles = join(cfg.out_dir, 'battles.jsonl');
        writeFileAtomic(files.battles, battles.map((b) => JSON.stringify(b)).join('\n') + '\n');
      } else {
        files.battles = join(cfg.out_dir, 'votes.jsonl');
        const r = await judgeByHuman(pairs, { input: io.input, output: io.output, votesPath: files.battles, seed: cfg.seed, columns: io.columns });
        battles = r.battles;
        quit = r.quit;
      }
    } finally {
      rm?.dispose();
    }
  }
  const result = rate(battles, cfg);
  files.ratings = join(cfg.out_dir, 'ratings.json');
  writeFileAtomic(files.ratings, JSON.stringify({
    method: { elo: { ...cfg.elo, order: 'file order' }, bradley_terry: 'MLE, wins weighted 2, ties 1 each (FastChat compute_mle_elo)', bootstrap_rounds: cfg.bootstrap_rounds, interval: '2.5%-97.5% quantiles', seed: cfg.seed },
    judge: cfg.judge, battles: result.battles, leaderboard: result.standings, win_rate: result.winRate,
  }, (_, v) => (typeof v === 'number' && Number.isNaN(v) ? null : v), 2) + '\n');
  const echarts = loadECharts();
  let chartSkipped: string | undefined;
  if (typeof echarts === 'string') {
    chartSkipped = `chart skipped: ${echarts}`;
    log().warn({}, chartSkipped);
  } else {
    files.chart = join(cfg.out_dir, 'arena.svg');
    writeFileSync(files.chart, arenaChartSvg(echarts, `llmctl arena: ${result.battles} battles, judge ${judge.kind}`, Object.fromEntries(result.standings.map((s) => [s.model, s.bt])), result.winRate));
  }
  return { ...result, files, chartSkipped, quit };
}
