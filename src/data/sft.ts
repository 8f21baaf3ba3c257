/**
 * Instruction data for `sft` and `lora`: Alpaca JSONL ({instruction, input, output}) and chat JSONL
 * ({messages: [{role, content}]}) → ChatML-rendered examples {ids, trainMask} → padded batches.
 *
 *  - Rows are rendered with the tokenizer's chat template (ChatML for our models; Jinja, as HF renders it).
 *  - Alpaca rows become a user turn (instruction, plus "\n\n" + input when input is non-empty) and an
 *    assistant turn (output); chat rows are rendered as given. Nothing else is appended.
 *  - trainMask comes from Tokenizer.renderChat: 1 on assistant content and its <|im_end|>, 0 elsewhere.
 *  - A bad row is an error naming the file, the line and the field (`data.jsonl: line 7: field 'output':
 *    must be a non-empty string`), or, with skip_invalid, is skipped and counted.
 *  - Examples longer than n_ctx + 1 tokens are cut on the right and counted; an example left with no
 *    trained token is dropped (and counted) since it would teach nothing.
 *  - Packing concatenates whole examples into rows of up to n_ctx + 1 tokens, masks kept (attention is
 *    not reset at example boundaries, as in TRL's simple packing).
 *  - Batches: inputs = row[0..T), targets = row[1..T]; mask[i] is the trainMask of the TARGET token, and
 *    padded positions have mask 0.
 */
import * as tf from '@tensorflow/tfjs-core';
import { RowError, readJsonlRows } from './input.js';
import { IM_END, IM_START, type ChatMessage, type Tokenizer } from '../tokenizer/index.js';
import type { BatchSource } from '../train/trainer.js';
import { Rng } from '../util/rng.js';

export type SftFormat = 'auto' | 'alpaca' | 'chat';

/** A row error: the message is the part after "path: line N: ". */
export class SftRowError extends RowError {}

export interface SftRow {
  line: number; // 1-based line in the file
  messages: ChatMessage[];
}

export interface SftReadResult {
  rows: SftRow[];
  /** Rows skipped because they were invalid (only with skipInvalid). */
  skipped: number;
  /** The first few skipped rows' reasons, for the log. */
  skippedReasons: string[];
}

const ROLES = new Set(['system', 'user', 'assistant']);

/** One parsed JSON value → chat messages, or an SftRowError naming the field. */
export function rowToMessages(row: unknown, format: SftFormat = 'auto'): ChatMessage[] {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new SftRowError(`expected a JSON object, got ${kind(row)}`);
  const r = row as Record<string, unknown>;
  const fmt = format !== 'auto' ? format : 'messages' in r ? 'chat' : 'instruction' in r || 'output' in r ? 'alpaca' : undefined;
  if (!fmt) throw new SftRowError(`field 'instruction': missing (expected an Alpaca row {instruction, input, output} or a chat row {messages})`);
  if (fmt === 'alpaca') {
    const instruction = str(r, 'instruction', true);
    const input = 'input' in r && r.input !== null ? str(r, 'input', false) : '';
    const output = str(r, 'output', true);
    return [
      { role: 'user', content: input ? `${instruction}\n\n${input}` : instruction },
      { role: 'assistant', content: output },
    ];
  }
  const msgs = r.messages;
  if (msgs === undefined) throw new SftRowError(`field 'messages': missing`);
  if (!Array.isArray(msgs)) throw new SftRowError(`field 'messages': expected a list, got ${kind(msgs)}`);
  if (msgs.length === 0) throw new SftRowError(`field 'messages': empty list`);
  const out: ChatMessage[] = [];
  msgs.forEach((m, i) => {
    const f = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new SftRowError(`field '${f}': expected an object {role, content}, got ${kind(m)}`);
    const mr = m as Record<string, unknown>;
    if (typeof mr.role !== 'string') throw new SftRowError(`field '${f}.role': ${mr.role === undefined ? 'missing' : `expected a string, got ${kind(mr.role)}`}`);
    if (!ROLES.has(mr.role)) throw new SftRowError(`field '${f}.role': expected one of system, user, assistant, got ${JSON.stringify(mr.role)}`);
    if (typeof mr.content !== 'string') throw new SftRowError(`field '${f}.content': ${mr.content === undefined ? 'missing' : `expected a string, got ${kind(mr.content)}`}`);
    if (mr.role === 'assistant' && mr.content.trim() === '') throw new SftRowError(`field '${f}.content': empty assistant message`);
    out.push({ role: mr.role as ChatMessage['role'], content: mr.content });
  });
  if (!out.some((m) => m.role === 'assistant')) throw new SftRowError(`field 'messages': no assistant message to train on`);
  return out;
}

function str(r: Record<string, unknown>, field: string, nonEmpty: boolean): string {
  const v = r[field];
  if (v === undefined) throw new SftRowError(`field '${field}': missing`);
  if (typeof v !== 'string') throw new SftRowError(`field '${field}': expected a string, got ${kind(v)}`);
  if (nonEmpty && v.trim() === '') throw new SftRowError(`field '${field}': must be a non-empty string`);
  return v;
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : typeof v;
}

/** Read an SFT JSONL file. Blank lines are ignored; a bad row throws `path: line N: …` unless skipInvalid. */
export function readSftJsonl(path: string, o: { format?: SftFormat; skipInvalid?: boolean } = {}): SftReadResult {
  const rows: SftRow[] = [];
  const { skipped, skippedReasons } = readJsonlRows(path, 'SFT data file', (value, line) => rows.push({ line, messages: rowToMessages(value, o.format) }), o);
  if (rows.length === 0) throw new Error(`${path}: no valid rows${skipped ? ` (${skipped} skipped as invalid)` : ''}`);
  return { rows, skipped, skippedReasons };
}

/** Fail early and clearly for tokenizers that have no chat template (setupChatFormat adds ChatML). */
export function assertChatTokenizer(tokenizer: Tokenizer, where: string): void {
  if (!tokenizer.chatTemplate) {
    throw new Error(
      `${where}: the tokenizer (${tokenizer.kind}) has no ChatML tokens ${IM_START}/${IM_END} and no chat template; ` +
        'sft and lora add them (setupChatFormat) before rendering data; rm, dpo and ppo need a checkpoint with a chat template (e.g. an sft output)',
    );
  }
}

export interface SftExample {
  ids: number[];
  trainMask: number[];
  line: number;
}

export interface TokenizeStats {
  examples: number;
  /** Examples cut to n_ctx + 1 tokens. */
  truncated: number;
  /** Examples with no trained token left after truncation (dropped). */
  droppedNoTarget: number;
  /** Trained (mask 1) tokens over all kept examples. */
  targetTokens: number;
  tokens: number;
}

/** Render rows with the tokenizer's ChatML template and cut them to maxLen tokens. */
export function tokenizeSft(tokenizer: Tokenizer, rows: readonly SftRow[], maxLen: number): { examples: SftExample[]; stats: TokenizeStats } {
  const examples: SftExample[] = [];
  const stats: TokenizeStats = { examples: 0, truncated: 0, droppedNoTarget: 0, targetTokens: 0, tokens: 0 };
  for (const row of rows) {
    let { ids, trainMask } = tokenizer.renderChat(row.messages);
    if (ids.length > maxLen) {
      stats.truncated += 1;
      ids = ids.slice(0, maxLen);
      trainMask = trainMask.slice(0, maxLen);
    }
    // trainMask[0] never counts (nothing predicts the first token).
    const targets = trainMask.reduce((a, m, i) => a + (i > 0 ? m : 0), 0);
    if (targets === 0) {
      stats.droppedNoTarget += 1;
      continue;
    }
    stats.targetTokens += targets;
    stats.tokens += ids.length;
    examples.push({ ids, trainMask, line: row.line });
  }
  stats.examples = examples.length;
  return { examples, stats };
}

/** Greedy packing in order: whole examples into rows of at most maxLen tokens (an example never splits). */
export function packExamples(examples: readonly SftExample[], maxLen: number): SftExample[] {
  const out: SftExample[] = [];
  let cur: SftExample | undefined;
  for (const ex of examples) {
    if (cur && cur.ids.length + ex.ids.length <= maxLen) {
      cur.ids.push(...ex.ids);
      cur.trainMask.push(...ex.trainMask);
    } else {
      if (cur) out.push(cur);
      cur = { ids: [...ex.ids], trainMask: [...ex.trainMask], line: ex.line };
    }
  }
  if (cur) out.push(cur);
  return out;
}

export interface SftBatch {
  inputs: tf.Tensor2D; // [B, T] int32
  targets: tf.Tensor1D; // [B*T] int32
  mask: tf.Tensor1D; // [B*T] float32: 1 where the target token is trained
  /** Positions that count toward the loss. */
  trainTokens: number;
}

/** Pad examples to the longest (T = max len − 1): mask[b, i] = trainMask[i + 1]; padding has mask 0. */
export function makeSftBatch(examples: readonly SftExample[], padId: number): SftBatch {
  const T = Math.max(1, ...examples.map((e) => e.ids.length - 1));
  const B = examples.length;
  const x = new Int32Array(B * T).fill(padId), y = new Int32Array(B * T).fill(padId), m = new Float32Array(B * T);
  let trainTokens = 0;
  examples.forEach((ex, b) => {
    for (let i = 0; i + 1 < ex.ids.length; i++) {
      x[b * T + i] = ex.ids[i]!;
      y[b * T + i] = ex.ids[i + 1]!;
      m[b * T + i] = ex.trainMask[i + 1]!;
      trainTokens += ex.trainMask[i + 1]!;
    }
  });
  return { inputs: tf.tensor2d(x, [B, T], 'int32'), targets: tf.tensor1d(y, 'int32'), mask: tf.tensor1d(m, 'float32'), trainTokens };
}

export function disposeSftBatch(b: SftBatch): void {
  b.inputs.dispose();
  b.targets.dispose();
  b.mask.dispose();
}

/**
 * Epoch-shuffled batches: draw k (0-based, over the whole run) takes examples [k·B, (k+1)·B) of the
 * concatenation of per-epoch permutations (epoch e shuffled with seed + e). Resume passes the number of
 * micro-batches already drawn, so a resumed run sees exactly the batches a straight run would.
 */
export function sftBatchSource(examples: readonly SftExample[], batchSize: number, padId: number, seed: number, startDraw = 0): BatchSource<SftBatch> & { epoch(): number } {
  return shuffledBatchSource(examples.length, batchSize, seed, startDraw, (idx) => makeSftBatch(idx.map((i) => examples[i]!), padId), {
    tokens: (b) => b.inputs.shape[0] * b.inputs.shape[1],
    dispose: disposeSftBatch,
  });
}

/** The draw order above for any example type: `make` builds a batch from example indices. */
export function shuffledBatchSource<B>(n: number, batchSize: number, seed: number, startDraw: number, make: (indices: number[]) => B, o: Pick<BatchSource<B>, 'tokens' | 'dispose'>): BatchSource<B> & { epoch(): number } {
  if (n === 0) throw new Error('no training examples');
  let draw = startDraw;
  let permEpoch = -1;
  let perm: number[] = [];
  const at = (k: number): number => {
    const e = Math.floor(k / n);
    if (e !== permEpoch) {
      perm = permutation(n, seed + e);
      permEpoch = e;
    }
    return perm[k % n]!;
  };
  return {
    next: () => {
      const idx: number[] = [];
      for (let i = 0; i < batchSize; i++) idx.push(at(draw * batchSize + i));
      draw += 1;
      return make(idx);
    },
    ...o,
    epoch: () => (draw * batchSize) / n,
  };
}

/** Fisher–Yates with our seeded RNG. */
export function permutation(n: number, seed: number): number[] {
  const rng = new Rng(seed + 1);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

/** Fixed, in-order batches for validation. */
export function fixedBatches<E>(examples: readonly E[], batchSize: number, maxBatches: number): E[][] {
  const out: E[][] = [];
  for (let i = 0; i < examples.length && out.length < maxBatches; i += batchSize) out.push(examples.slice(i, i + batchSize));
  return out;
}
