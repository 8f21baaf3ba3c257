/**
 * Battle records in FastChat's clean-battle form ({model_a, model_b, winner, …}), as a JSON list (FastChat's
 * clean_battle_*.json) or JSONL (what `llmctl arena` writes, one vote per line as it is cast).
 */
import { appendFileSync, existsSync } from 'node:fs';
import { DataError, readJson, readJsonl, readText } from '../read.js';
import { type Battle, WINNERS, type Winner } from './ratings.js';

/** A battle plus what the arena knows about it (kept in the JSONL, ignored by the ratings). */
export interface BattleRecord extends Battle {
  question_id?: number | string;
  judge?: string;
  /** true when the answer shown first (A) was model_b's: the order a human or judge saw. */
  swapped?: boolean;
  score_a?: number;
  score_b?: number;
  tstamp?: number;
}

function check(row: unknown, where: string): BattleRecord {
  const r = row as Record<string, unknown>;
  if (typeof r !== 'object' || r === null) throw new DataError(`${where}: expected an object`);
  for (const k of ['model_a', 'model_b'] as const) if (typeof r[k] !== 'string' || !r[k]) throw new DataError(`${where}: field '${k}' should be a model name`);
  if (!WINNERS.includes(r.winner as Winner)) throw new DataError(`${where}: winner '${String(r.winner)}' is not one of ${WINNERS.join(', ')}`);
  if (r.model_a === r.model_b) throw new DataError(`${where}: model_a and model_b are both '${String(r.model_a)}'`);
  return r as unknown as BattleRecord;
}

export function readBattles(path: string): BattleRecord[] {
  const text = readText(path).trimStart();
  if (text.startsWith('[')) {
    const data = readJson(path);
    return (data as unknown[]).map((row, i) => check(row, `${path}: item ${i}`));
  }
  return readJsonl(path).map(({ row, line }) => check(row, `${path}:${line}`));
}

export function appendBattle(path: string, b: BattleRecord): void {
  appendFileSync(path, JSON.stringify(b) + '\n');
}

export function readBattlesIfAny(path: string): BattleRecord[] {
  return existsSync(path) ? readBattles(path) : [];
}
