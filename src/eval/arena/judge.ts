/**
 * Judges turn answer pairs into battles:
 *  - a reward model (llmctl rm output: a checkpoint with a score.weight head) scores each answer; the higher
 *    score wins, a difference within `margin` is a tie; every pair is judged in both orders;
 *  - a human at the terminal sees the two answers side by side, anonymised and in random order, and votes
 *    with a key; each vote is appended to the votes JSONL as it is cast, so a later run resumes.
 */
import * as tf from '@tensorflow/tfjs-core';
import { join } from 'node:path';
import * as readline from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { type LoadedCheckpoint, MODEL_FILE, disposeParams, loadCheckpoint } from '../../checkpoint/model.js';
import { IM_END, IM_START } from '../../tokenizer/index.js';
import { SCORE, rewardForward } from '../../align/reward.js';
import { oneHotFloat } from '../../model/kernels.js';
import { Rng } from '../../util/rng.js';
import { DataError } from '../read.js';
import { type BattleRecord, appendBattle, readBattlesIfAny } from './battles.js';
import type { Winner } from './ratings.js';

export interface AnswerPair {
  question_id: number;
  prompt: string;
  model_a: string;
  model_b: string;
  answer_a: string;
  answer_b: string;
}

// ------------------------------------------------------------------------------------ reward model

/** The reward head of `llmctl rm` checkpoints (Hugging Face *ForSequenceClassification, num_labels 1). */
export const SCORE_WEIGHT = 'score.weight';

export interface RewardModel {
  score(prompt: string, answer: string): number;
  dispose(): void;
}

/**
 * A reward model written by `llmctl rm`: a checkpoint whose model.safetensors also holds `score.weight`
 * [1, n_embd]; reward = score · final hidden state at the answer's last token. The conversation is rendered as
 * ChatML (user prompt, assistant answer, ending at <|im_end|>) when the tokenizer has those tokens, as rm trains.
 */
export function loadRewardModel(dir: string): RewardModel {
  // The one checkpoint reader (HF layout, verification); the head comes back beside the transformer.
  let ck: LoadedCheckpoint;
  try {
    ck = loadCheckpoint(dir, { heads: true });
  } catch (err) {
    throw new DataError((err as Error).message);
  }
  const { config, params } = ck;
  const w = ck.heads?.[SCORE_WEIGHT];
  if (!w || w.size !== config.n_embd) {
    disposeParams(params);
    disposeParams(ck.heads ?? {});
    throw new DataError(`${join(dir, MODEL_FILE)}: not a reward model (no '${SCORE_WEIGHT}' of ${config.n_embd} values; train one with llmctl rm)`);
  }
  const tok = ck.tokenizer;
  const withHead = { ...params, [SCORE]: w };
  const chat = tok.kind === 'byte_level' && tok.tokenToId(IM_START) !== undefined && tok.tokenToId(IM_END) !== undefined;
  const encode = (prompt: string, answer: string): number[] => {
    if (!chat) return tok.encode(prompt + answer, { addBos: tok.bosId !== undefined, allowSpecial: false });
    const ids = tok.renderChat([{ role: 'user', content: prompt }, { role: 'assistant', content: answer }]).ids;
    return ids.slice(0, ids.lastIndexOf(tok.tokenToId(IM_END)!) + 1);
  };
  return {
    score(prompt, answer) {
      let ids = encode(prompt, answer);
      if (!ids.length) ids = [tok.eosId];
      ids = ids.slice(-config.n_ctx);
      // The same head read as `llmctl rm` trains and scores it (align/reward.ts).
      return tf.tidy(() => {
        const input = tf.tensor2d([ids], [1, ids.length], 'int32');
        const last = tf.reshape(oneHotFloat(tf.tensor1d([ids.length - 1], 'int32'), ids.length), [ids.length]) as tf.Tensor1D;
        return rewardForward(withHead, config, input, last).dataSync()[0] ?? 0;
      });
    },
    dispose() {
      w.dispose();
      disposeParams(params);
    },
  };
}

/** Both orders of every pair, the higher reward wins; |difference| ≤ margin is a tie. */
export function judgeWithRewardModel(pairs: AnswerPair[], rm: Pick<RewardModel, 'score'>, margin: number): BattleRecord[] {
  const out: BattleRecord[] = [];
  for (const p of pairs) {
    const sa = rm.score(p.prompt, p.answer_a), sb = rm.score(p.prompt, p.answer_b);
    const verdict = (x: number, y: number): Winner => (Math.abs(x - y) <= margin ? 'tie' : x > y ? 'model_a' : 'model_b');
    out.push({ model_a: p.model_a, model_b: p.model_b, winner: verdict(sa, sb), question_id: p.question_id, judge: 'rm', swapped: false, score_a: sa, score_b: sb });
    out.push({ model_a: p.model_b, model_b: p.model_a, winner: verdict(sb, sa), question_id: p.question_id, judge: 'rm', swapped: true, score_a: sb, score_b: sa });
  }
  return out;
}

// ------------------------------------------------------------------------------------------- human

/** Wrap text to `width` columns (hard-breaking long words), keeping the answer's own newlines. */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  for (const para of text.split('\n')) {
    let line = '';
    for (const word of para.split(/(\s+)/)) {
      if (!word) continue;
      if ((line + word).length > width) {
        if (line.trim()) lines.push(line.trimEnd());
        line = word.trimStart();
        while (line.length > width) { lines.push(line.slice(0, width)); line = line.slice(width); }
      } else line += word;
    }
    lines.push(line.trimEnd());
  }
  return lines;
}

export function sideBySide(left: string, right: string, columns: number): string {
  const w = Math.max(20, Math.floor((columns - 3) / 2));
  const l = wrap(left, w), r = wrap(right, w);
  const rows = [`${'Answer A'.padEnd(w)} │ Answer B`, `${'─'.repeat(w)}─┼─${'─'.repeat(w)}`];
  for (let i = 0; i < Math.max(l.length, r.length); i++) rows.push(`${(l[i] ?? '').padEnd(w)} │ ${r[i] ?? ''}`);
  return rows.join('\n');
}

/** One key per vote: raw keypresses on a terminal, one line per key otherwise (pipes, tests). */
function keyReader(input: Readable): { next(): Promise<string | undefined>; close(): void } {
  const tty = (input as NodeJS.ReadStream).isTTY === true;
  const queue: string[] = [];
  let waiting: ((k: string | undefined) => void) | undefined, ended = false;
  const push = (k: string | undefined) => {
    if (waiting) { const w = waiting; waiting = undefined; w(k); } else if (k !== undefined) queue.push(k);
  };
  let rl: readline.Interface | undefined;
  const onKey = (str: string | undefined, key: { name?: string; ctrl?: boolean }) => push(key?.ctrl && key.name === 'c' ? 'q' : (str ?? key?.name ?? '').toLowerCase());
  if (tty) {
    readline.emitKeypressEvents(input);
    (input as NodeJS.ReadStream).setRawMode(true);
    input.on('keypress', onKey);
  } else {
    rl = readline.createInterface({ input, terminal: false });
    rl.on('line', (l) => push(l.trim().toLowerCase()));
    rl.on('close', () => { ended = true; push(undefined); });
  }
  return {
    next: () => (queue.length ? Promise.resolve(queue.shift()) : ended ? Promise.resolve(undefined) : new Promise((res) => (waiting = res))),
    close: () => {
      if (tty) { input.off('keypress', onKey); (input as NodeJS.ReadStream).setRawMode(false); (input as NodeJS.ReadStream).pause(); }
      rl?.close();
    },
  };
}

export interface HumanJudgeOptions {
  input: Readable;
  output: Writable;
  votesPath: string;
  seed: number;
  columns?: number;
}

const pairKey = (qid: number | string | undefined, a: string, b: string) => `${qid}\u0000${[a, b].sort().join('\u0000')}`;

/**
 * Ask for a vote on every pair not yet in the votes file, in a seeded random order and with a random side for
 * each model. Keys: a, b, t (tie), n (both bad), s (skip), q (quit). Returns every vote in the file.
 */
export async function judgeByHuman(pairs: AnswerPair[], o: HumanJudgeOptions): Promise<{ battles: BattleRecord[]; asked: number; quit: boolean }> {
  const done = new Set(readBattlesIfAny(o.votesPath).map((b) => pairKey(b.question_id, b.model_a, b.model_b)));
  const rng = new Rng(o.seed);
  const order = pairs.map((p, i) => ({ p, r: rng.nextFloat(), swap: rng.nextFloat() < 0.5, i })).sort((x, y) => x.r - y.r || x.i - y.i);
  const todo = order.filter(({ p }) => !done.has(pairKey(p.question_id, p.model_a, p.model_b)));
  const say = (s: string) => o.output.write(s);
  if (done.size) say(`resuming: ${done.size} votes already in ${o.votesPath}, ${todo.length} to go\n`);
  const keys = keyReader(o.input);
  let asked = 0, quit = false;
  try {
    for (const { p, swap } of todo) {
      const [first, second] = swap ? [p.answer_b, p.answer_a] : [p.answer_a, p.answer_b];
      say(`\n[${asked + 1}/${todo.length}] ${p.prompt}\n\n${sideBySide(first, second, o.columns ?? 100)}\n\n[a] A is better  [b] B is better  [t] tie  [n] both bad  [s] skip  [q] quit > `);
      let key: string | undefined;
      do key = await keys.next(); while (key !== undefined && !['a', 'b', 't', 'n', 's', 'q'].includes(key));
      say(`${key ?? ''}\n`);
      asked++;
      if (key === undefined || key === 'q') { quit = true; break; }
      if (key === 's') continue;
      // Record in model order: "A" means whichever model was shown first.
      const shownFirstWins: Winner = key === 'a' ? 'model_a' : key === 'b' ? 'model_b' : key === 't' ? 'tie' : 'tie (bothbad)';
      const winner: Winner = swap && (shownFirstWins === 'model_a' || shownFirstWins === 'model_b') ? (shownFirstWins === 'model_a' ? 'model_b' : 'model_a') : shownFirstWins;
      appendBattle(o.votesPath, { model_a: p.model_a, model_b: p.model_b, winner, question_id: p.question_id, judge: 'human', swapped: swap, tstamp: Date.now() / 1000 });
      say(`  (A was ${swap ? p.model_b : p.model_a}, B was ${swap ? p.model_a : p.model_b})\n`);
    }
  } finally {
    keys.close();
  }
  return { battles: readBattlesIfAny(o.votesPath), asked, quit };
}
