/**
 * Preference data for `rm` and `dpo`: one reader for the formats users bring, → pairs {prompt messages,
 * chosen text, rejected text} → ChatML-rendered token pairs → padded batches.
 *
 * Formats (auto-detected per row, or fixed with `format`):
 *   standard      {"prompt": "…", "chosen": "…", "rejected": "…"}                       (TRL)
 *                 {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}            (TRL conversational)
 *                 {"chosen": [msgs], "rejected": [msgs]}  the prompt is the longest common message
 *                 prefix (TRL's implicit prompt); what follows it must be one assistant message each
 *   hh            {"chosen": "\n\nHuman: …\n\nAssistant: …", "rejected": "…"}          (Anthropic HH-RLHF)
 *                 the transcripts are parsed into turns; the last assistant turn is the response
 *   llamafactory  {"conversations": [{"from", "value"}], "chosen": {"from","value"}, "rejected": {…}}
 *                 {"instruction", "input", "chosen", "rejected"}  (its Alpaca-style pairs)
 *   ranked        {"prompt": …, "responses": [best, …, worst]}  → all K·(K−1)/2 pairs (InstructGPT)
 * An optional numeric "margin" (TRL's RewardTrainer column) rides along with the pair.
 *
 * Rendering: the prompt is rendered with the tokenizer's chat template plus the assistant header; the
 * response is the assistant content and its <|im_end|>. Only response tokens count (log-probs, reward
 * position). Sequences longer than n_ctx drop prompt tokens from the LEFT first (the same cut for chosen
 * and rejected, so both see one prompt), then response tokens from the left: the response end is kept.
 */
import * as tf from '@tensorflow/tfjs-core';
import { RowError, readJsonlRows } from './input.js';
import type { ChatMessage, Tokenizer } from '../tokenizer/index.js';
import type { BatchSource } from '../train/trainer.js';
import { fixedBatches, shuffledBatchSource } from './sft.js';

export type PreferenceFormat = 'auto' | 'standard' | 'hh' | 'llamafactory' | 'ranked';

/** A row error: the message is the part after "path: line N: ". */
export class PreferenceRowError extends RowError {}

export interface PreferencePair {
  line: number; // 1-based line in the file
  prompt: ChatMessage[];
  chosen: string;
  rejected: string;
  margin?: number;
}

export interface PreferenceReadResult {
  pairs: PreferencePair[];
  /** Rows (not pairs) in the file that were valid. */
  rows: number;
  skipped: number;
  skippedReasons: string[];
}

const EXPECTED =
  'expected a preference row: {prompt, chosen, rejected}, HH-RLHF {chosen, rejected} transcripts, LLaMA-Factory {conversations, chosen, rejected} or ranked {prompt, responses}';

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : typeof v;
}

function detect(r: Record<string, unknown>): Exclude<PreferenceFormat, 'auto'> {
  if ('responses' in r) return 'ranked';
  if ('conversations' in r) return 'llamafactory';
  if (!('prompt' in r) && typeof r.chosen === 'string' && /\n\nHuman:/.test(r.chosen)) return 'hh';
  if ('chosen' in r || 'rejected' in r || 'prompt' in r) return 'standard';
  throw new PreferenceRowError(`field 'chosen': missing (${EXPECTED})`);
}

/** One parsed JSON value → preference pairs (ranked rows give several), or a PreferenceRowError naming the field. */
export function rowToPairs(row: unknown, format: PreferenceFormat = 'auto'): Omit<PreferencePair, 'line'>[] {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new PreferenceRowError(`expected a JSON object, got ${kind(row)}`);
  const r = row as Record<string, unknown>;
  const fmt = format === 'auto' ? detect(r) : format;
  const margin = readMargin(r);
  let pairs: Omit<PreferencePair, 'line'>[];
  if (fmt === 'ranked') pairs = rankedPairs(r);
  else if (fmt === 'llamafactory') pairs = [llamaFactoryPair(r)];
  else if (fmt === 'hh') pairs = [hhPair(r)];
  else pairs = [standardPair(r)];
  for (const p of pairs) {
    if (p.chosen === p.rejected) throw new PreferenceRowError(`field 'rejected': identical to 'chosen' (a pair must differ)`);
    if (margin !== undefined) p.margin = margin;
  }
  return pairs;
}

function readMargin(r: Record<string, unknown>): number | undefined {
  if (r.margin === undefined || r.margin === null) return undefined;
  if (typeof r.margin !== 'number' || !Number.isFinite(r.margin)) throw new PreferenceRowError(`field 'margin': expected a number, got ${kind(r.margin)}`);
  return r.margin;
}

function responseText(v: unknown, field: string): string {
  if (typeof v !== 'string') throw new PreferenceRowError(`field '${field}': expected a string, got ${kind(v)}`);
  if (v.trim() === '') throw new PreferenceRowError(`field '${field}': empty response`);
  return v;
}

const ROLES = new Set(['system', 'user', 'assistant']);

function messages(v: unknown, field: string): ChatMessage[] {
  if (!Array.isArray(v)) throw new PreferenceRowError(`field '${field}': expected a list of messages, got ${kind(v)}`);
  return v.map((m, i) => {
    const f = `${field}[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new PreferenceRowError(`field '${f}': expected an object {role, content}, got ${kind(m)}`);
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.has(role)) throw new PreferenceRowError(`field '${f}.role': expected one of system, user, assistant, got ${role === undefined ? 'nothing' : JSON.stringify(role)}`);
    if (typeof content !== 'string') throw new PreferenceRowError(`field '${f}.content': expected a string, got ${kind(content)}`);
    return { role: role as ChatMessage['role'], content };
  });
}

const sameMessage = (a: ChatMessage, b: ChatMessage) => a.role === b.role && a.content === b.content;

/** The one assistant message left after the prompt: the response. */
function singleResponse(rest: ChatMessage[], field: string): string {
  if (rest.length !== 1) throw new PreferenceRowError(`field '${field}': expected one assistant message after the prompt, got ${rest.length} messages`);
  if (rest[0]!.role !== 'assistant') throw new PreferenceRowError(`field '${field}': the response must be an assistant message, got role ${JSON.stringify(rest[0]!.role)}`);
  return responseText(rest[0]!.content, `${field}.content`);
}

function promptOf(v: unknown): ChatMessage[] {
  if (typeof v === 'string') {
    if (v.trim() === '') throw new PreferenceRowError(`field 'prompt': empty`);
    return [{ role: 'user', content: v }];
  }
  const msgs = messages(v, 'prompt');
  if (msgs.length === 0) throw new PreferenceRowError(`field 'prompt': empty list`);
  return msgs;
}

/** A response given as a string, a message list, or one message object. */
function responseOf(v: unknown, field: string): string {
  if (typeof v === 'string') return responseText(v, field);
  if (v === undefined) throw new PreferenceRowError(`field '${field}': missing`);
  if (typeof v !== 'object' || v === null) throw new PreferenceRowError(`field '${field}': expected a string or an assistant message, got ${kind(v)}`);
  return singleResponse(messages(Array.isArray(v) ? v : [v], field), field);
}

function standardPair(r: Record<string, unknown>): Omit<PreferencePair, 'line'> {
  if (r.chosen === undefined) throw new PreferenceRowError(`field 'chosen': missing (${EXPECTED})`);
  if (r.rejected === undefined) throw new PreferenceRowError(`field 'rejected': missing`);
  if (r.prompt !== undefined) return { prompt: promptOf(r.prompt), chosen: responseOf(r.chosen, 'chosen'), rejected: responseOf(r.rejected, 'rejected') };
  if (r.instruction !== undefined) {
    // LLaMA-Factory's Alpaca-style pairs: the prompt is rendered as SFT renders an Alpaca row.
    if (typeof r.instruction !== 'string' || !r.instruction.trim()) throw new PreferenceRowError(`field 'instruction': expected a non-empty string`);
    if (r.input !== undefined && r.input !== null && typeof r.input !== 'string') throw new PreferenceRowError(`field 'input': expected a string, got ${kind(r.input)}`);
    const content = typeof r.input === 'string' && r.input ? `${r.instruction}\n\n${r.input}` : r.instruction;
    return { prompt: [{ role: 'user', content }], chosen: responseOf(r.chosen, 'chosen'), rejected: responseOf(r.rejected, 'rejected') };
  }
  // Implicit prompt: the longest common message prefix of the two conversations.
  if (!Array.isArray(r.chosen)) throw new PreferenceRowError(`field 'prompt': missing (needed when chosen/rejected are strings)`);
  const c = messages(r.chosen, 'chosen'), j = messages(r.rejected, 'rejected');
  let n = 0;
  while (n < c.length && n < j.length && sameMessage(c[n]!, j[n]!)) n++;
  if (n === 0) throw new PreferenceRowError(`field 'chosen': no common prompt with 'rejected' (the conversations must share their opening messages)`);
  return { prompt: c.slice(0, n), chosen: singleResponse(c.slice(n), 'chosen'), rejected: singleResponse(j.slice(n), 'rejected') };
}

/** "\n\nHuman: …\n\nAssistant: …" → messages. */
export function parseHhTranscript(text: string, field: string): ChatMessage[] {
  const parts = text.split(/\n\n(Human|Assistant):[ ]?/);
  if (parts.length < 3 || parts[0]!.trim() !== '') throw new PreferenceRowError(`field '${field}': not an HH-RLHF transcript ("\\n\\nHuman: …\\n\\nAssistant: …")`);
  const out: ChatMessage[] = [];
  for (let i = 1; i + 1 < parts.length; i += 2) out.push({ role: parts[i] === 'Human' ? 'user' : 'assistant', content: parts[i + 1]! });
  return out;
}

function hhPair(r: Record<string, unknown>): Omit<PreferencePair, 'line'> {
  if (typeof r.chosen !== 'string') throw new PreferenceRowError(`field 'chosen': expected an HH-RLHF transcript string, got ${kind(r.chosen)}`);
  if (typeof r.rejected !== 'string') throw new PreferenceRowError(`field 'rejected': expected an HH-RLHF transcript string, got ${kind(r.rejected)}`);
  const c = parseHhTranscript(r.chosen, 'chosen'), j = parseHhTranscript(r.rejected, 'rejected');
  const split = (m: ChatMessage[], field: string) => {
    if (m.at(-1)!.role !== 'assistant') throw new PreferenceRowError(`field '${field}': the transcript does not end with an Assistant turn`);
    return { prompt: m.slice(0, -1), response: responseText(m.at(-1)!.content, `${field}`) };
  };
  const sc = split(c, 'chosen'), sj = split(j, 'rejected');
  if (sc.prompt.length !== sj.prompt.length || sc.prompt.some((m, i) => !sameMessage(m, sj.prompt[i]!))) {
    throw new PreferenceRowError(`field 'rejected': differs from 'chosen' before the last Assistant turn (HH pairs share the conversation up to the response)`);
  }
  if (sc.prompt.length === 0) throw new PreferenceRowError(`field 'chosen': no Human turn before the response`);
  return { prompt: sc.prompt, chosen: sc.response, rejected: sj.response };
}

const LF_ROLES: Record<string, ChatMessage['role']> = { human: 'user', user: 'user', gpt: 'assistant', assistant: 'assistant', system: 'system' };

function lfMessage(m: unknown, field: string): ChatMessage {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new PreferenceRowError(`field '${field}': expected an object {from, value}, got ${kind(m)}`);
  const { from, value } = m as Record<string, unknown>;
  const role = typeof from === 'string' ? LF_ROLES[from] : undefined;
  if (!role) throw new PreferenceRowError(`field '${field}.from': expected one of human, gpt, system, got ${from === undefined ? 'nothing' : JSON.stringify(from)}`);
  if (typeof value !== 'string') throw new PreferenceRowError(`field '${field}.value': expected a string, got ${kind(value)}`);
  return { role, content: value };
}

function llamaFactoryPair(r: Record<string, unknown>): Omit<PreferencePair, 'line'> {
  if (!Array.isArray(r.conversations) || r.conversations.length === 0) throw new PreferenceRowError(`field 'conversations': expected a non-empty list, got ${kind(r.conversations)}`);
  const prompt = r.conversations.map((m, i) => lfMessage(m, `conversations[${i}]`));
  if (typeof r.system === 'string' && r.system) prompt.unshift({ role: 'system', content: r.system });
  const resp = (field: string) => {
    const m = lfMessage(r[field] === undefined ? undefined : r[field], field);
    if (m.role !== 'assistant') throw new PreferenceRowError(`field '${field}.from': the response must be from gpt, got ${m.role}`);
    return responseText(m.content, `${field}.value`);
  };
  if (r.chosen === undefined) throw new PreferenceRowError(`field 'chosen': missing`);
  if (r.rejected === undefined) throw new PreferenceRowError(`field 'rejected': missing`);
  return { prompt, chosen: resp('chosen'), rejected: resp('rejected') };
}

function rankedPairs(r: Record<string, unknown>): Omit<PreferencePair, 'line'>[] {
  if (r.prompt === undefined) throw new PreferenceRowError(`field 'prompt': missing`);
  const prompt = promptOf(r.prompt);
  if (!Array.isArray(r.responses)) throw new PreferenceRowError(`field 'responses': expected a list ranked best to worst, got ${kind(r.responses)}`);
  if (r.responses.length < 2) throw new PreferenceRowError(`field 'responses': needs at least 2 responses, got ${r.responses.length}`);
  const texts = r.responses.map((v, i) => responseOf(v, `responses[${i}]`));
  const pairs: Omit<PreferencePair, 'line'>[] = [];
  for (let i = 0; i < texts.length; i++) {
    for (let j = i + 1; j < texts.length; j++) {
      if (texts[i] === texts[j]) throw new PreferenceRowError(`field 'responses[${j}]': identical to responses[${i}]`);
      pairs.push({ prompt, chosen: texts[i]!, rejected: texts[j]! });
    }
  }
  return pairs;
}

/** Read a preference JSONL file. Blank lines are ignored; a bad row throws `path: line N: …` unless skipInvalid. */
export function readPreferenceJsonl(path: string, o: { format?: PreferenceFormat; skipInvalid?: boolean } = {}): PreferenceReadResult {
  const pairs: PreferencePair[] = [];
  let rows = 0;
  const { skipped, skippedReasons } = readJsonlRows(path, 'preference data file', (value, line) => {
    for (const p of rowToPairs(value, o.format)) pairs.push({ line, ...p });
    rows += 1;
  }, o);
  if (pairs.length === 0) throw new Error(`${path}: no valid preference rows${skipped ? ` (${skipped} skipped as invalid; first: ${skippedReasons[0]})` : ''}`);
  return { pairs, rows, skipped, skippedReasons };
}

// ---------------------------------------------------------------------------------------------
// Tokenized pairs and batches
// ---------------------------------------------------------------------------------------------

/** One side of a pair: the rendered token ids; ids[start..] are the response (content + <|im_end|>). */
export interface RenderedResponse {
  ids: number[];
  start: number;
}

export interface PairExample {
  chosen: RenderedResponse;
  rejected: RenderedResponse;
  margin: number;
  line: number;
}

export interface PairTokenizeStats {
  pairs: number;
  /** Pairs whose prompt (or response) was cut to fit n_ctx. */
  truncated: number;
  /** Pairs that lost response tokens too (the prompt alone could not make room). */
  responseTruncated: number;
  tokens: number;
}

/** Render the prompt + assistant header, and each response as content + <|im_end|> (without the trailing newline). */
export function renderPair(tokenizer: Tokenizer, pair: Pick<PreferencePair, 'prompt' | 'chosen' | 'rejected'>): { prompt: number[]; chosen: number[]; rejected: number[] } {
  const prompt = tokenizer.renderChat(pair.prompt, { addGenerationPrompt: true }).ids;
  const response = (content: string) => {
    const full = tokenizer.renderChat([...pair.prompt, { role: 'assistant', content }]);
    // The rendering is segment by segment, so the full conversation starts with the prompt's tokens;
    // the response is the masked run that follows (content + <|im_end|>), the trailing "\n" is dropped.
    let end = full.ids.length;
    while (end > prompt.length && full.trainMask[end - 1] === 0) end--;
    return full.ids.slice(prompt.length, end);
  };
  return { prompt, chosen: response(pair.chosen), rejected: response(pair.rejected) };
}

/**
 * Fit a rendered pair into maxLen tokens per sequence: drop prompt tokens from the left first (keeping at
 * least one, so the first response token is predicted), then response tokens from the left.
 */
export function fitPair(prompt: number[], chosen: number[], rejected: number[], maxLen: number): { chosen: RenderedResponse; rejected: RenderedResponse; truncated: boolean; responseTruncated: boolean } {
  const longest = Math.max(chosen.length, rejected.length);
  const keepPrompt = Math.min(prompt.length, Math.max(1, maxLen - longest));
  const room = maxLen - keepPrompt;
  const p = prompt.slice(prompt.length - keepPrompt);
  const side = (r: number[]): RenderedResponse => ({ ids: [...p, ...(r.length > room ? r.slice(r.length - room) : r)], start: p.length });
  return { chosen: side(chosen), rejected: side(rejected), truncated: keepPrompt < prompt.length || longest > room, responseTruncated: longest > room };
}

export function tokenizePairs(tokenizer: Tokenizer, pairs: readonly PreferencePair[], maxLen: number): { examples: PairExample[]; stats: PairTokenizeStats } {
  const stats: PairTokenizeStats = { pairs: 0, truncated: 0, responseTruncated: 0, tokens: 0 };
  const examples = pairs.map((pair) => {
    const r = renderPair(tokenizer, pair);
    const fit = fitPair(r.prompt, r.chosen, r.rejected, maxLen);
    if (fit.truncated) stats.truncated += 1;
    if (fit.responseTruncated) stats.responseTruncated += 1;
    stats.tokens += fit.chosen.ids.length + fit.rejected.ids.length;
    return { chosen: fit.chosen, rejected: fit.rejected, margin: pair.margin ?? 0, line: pair.line };
  });
  stats.pairs = examples.length;
  return { examples, stats };
}

/**
 * B pairs → 2B rows: rows [0, B) are the chosen sequences, rows [B, 2B) the rejected ones (one forward
 * for both, as TRL's concatenated_forward). Right-padded to the longest row (T = its length).
 *   inputs[r, i] = ids[i]; targets[r, i] = ids[i + 1]; mask[r, i] = 1 when ids[i + 1] is a response token
 *   last[r, i] = 1 at i = len − 1, the last response token (<|im_end|>): where the reward head reads.
 */
export interface PreferenceBatch {
  inputs: tf.Tensor2D; // [2B, T] int32
  targets: tf.Tensor1D; // [2B·T] int32
  mask: tf.Tensor1D; // [2B·T] float32
  last: tf.Tensor1D; // [2B·T] float32, one 1 per row
  margin: tf.Tensor1D; // [B]
  pairs: number;
  /** Row indices into the examples list the batch was made from (for precomputed reference log-probs). */
  index: number[];
}

export function makePreferenceBatch(examples: readonly PairExample[], padId: number, index: number[] = examples.map((_, i) => i)): PreferenceBatch {
  const rows = [...examples.map((e) => e.chosen), ...examples.map((e) => e.rejected)];
  const R = rows.length, T = Math.max(...rows.map((r) => r.ids.length));
  const x = new Int32Array(R * T).fill(padId), y = new Int32Array(R * T).fill(padId), m = new Float32Array(R * T), last = new Float32Array(R * T);
  rows.forEach((r, b) => {
    for (let i = 0; i < r.ids.length; i++) {
      x[b * T + i] = r.ids[i]!;
      if (i + 1 < r.ids.length) {
        y[b * T + i] = r.ids[i + 1]!;
        m[b * T + i] = i + 1 >= r.start ? 1 : 0;
      }
    }
    last[b * T + r.ids.length - 1] = 1;
  });
  return {
    inputs: tf.tensor2d(x, [R, T], 'int32'),
    targets: tf.tensor1d(y, 'int32'),
    mask: tf.tensor1d(m, 'float32'),
    last: tf.tensor1d(last, 'float32'),
    margin: tf.tensor1d(examples.map((e) => e.margin), 'float32'),
    pairs: examples.length,
    index,
  };
}

export function disposePreferenceBatch(b: PreferenceBatch): void {
  for (const t of [b.inputs, b.targets, b.mask, b.last, b.margin]) t.dispose();
}

/** Epoch-shuffled pair batches, resumable by draw count (as the SFT source). */
export function preferenceBatchSource(examples: readonly PairExample[], batchSize: number, padId: number, seed: number, startDraw = 0): BatchSource<PreferenceBatch> {
  return shuffledBatchSource(examples.length, batchSize, seed, startDraw, (idx) => makePreferenceBatch(idx.map((i) => examples[i]!), padId, idx), {
    tokens: (b) => b.inputs.shape[0] * b.inputs.shape[1],
    dispose: disposePreferenceBatch,
  });
}

/** Fixed, in-order batches (validation, scoring, reference log-probs): [start index, examples]. */
export function fixedPairBatches(examples: readonly PairExample[], batchSize: number, maxBatches = Infinity): { index: number[]; examples: PairExample[] }[] {
  return fixedBatches(examples, batchSize, maxBatches).map((group, k) => ({ index: group.map((_, i) => k * batchSize + i), examples: group }));
}
