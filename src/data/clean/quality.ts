/**
 * Quality heuristics after Gopher (Rae et al. 2021, appendix A.1.1: word counts, mean word length, symbol
 * ratio, bullet/ellipsis lines, repetition of lines, paragraphs and n-grams, stop words) and C4 (lines ending
 * in terminal punctuation), plus a language check by script share. `qualityFailure` returns the first rule a
 * document fails, or undefined when it passes.
 */
import type { z } from 'zod';
import type { QualityStepSchema } from '../../config/clean.js';
import { fmix32, rawWords, words } from './text.js';

export type QualityOptions = z.infer<typeof QualityStepSchema>;

const STOP_WORDS = new Set(['the', 'be', 'to', 'of', 'and', 'that', 'have', 'with']);
const BULLET = /^\s*(?:[•●○■□▪▫◦‣⁃*-]|\d+[.)])\s/;
const TERMINAL = /[.!?"'”’]$/;
const NOT_LETTER = /\P{L}/gu;
const NOT_IN_SCRIPT: Record<Exclude<QualityOptions['script'], 'any'>, RegExp> = {
  latin: /\P{Script=Latin}/gu,
  cyrillic: /\P{Script=Cyrillic}/gu,
  greek: /\P{Script=Greek}/gu,
  han: /\P{Script=Han}/gu,
  arabic: /\P{Script=Arabic}/gu,
};

export function qualityFailure(text: string, o: QualityOptions): string | undefined {
  const raw = rawWords(text);
  const n = raw.length;
  if (n < o.min_words) return 'min_words';
  if (n > o.max_words) return 'max_words';
  const meanLen = raw.reduce((s, w) => s + w.length, 0) / Math.max(1, n);
  if (meanLen < o.min_mean_word_length) return 'min_mean_word_length';
  if (meanLen > o.max_mean_word_length) return 'max_mean_word_length';
  const symbols = (text.match(/#/g)?.length ?? 0) + (text.match(/\.\.\.|…/g)?.length ?? 0);
  if (symbols / Math.max(1, n) > o.max_symbol_word_ratio) return 'max_symbol_word_ratio';

  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  if (lines.length > 0) {
    if (lines.filter((l) => BULLET.test(l)).length / lines.length > o.max_bullet_lines) return 'max_bullet_lines';
    if (lines.filter((l) => /(?:\.\.\.|…)$/.test(l)).length / lines.length > o.max_ellipsis_lines) return 'max_ellipsis_lines';
    if (o.min_punct_lines > 0 && lines.filter((l) => TERMINAL.test(l)).length / lines.length < o.min_punct_lines) return 'min_punct_lines';
    const dup = duplicateShare(lines);
    if (dup.items > o.max_duplicate_lines) return 'max_duplicate_lines';
    if (dup.chars > o.max_duplicate_line_chars) return 'max_duplicate_line_chars';
  }

  const w = words(text);
  const totalChars = w.reduce((s, x) => s + x.length, 0);
  if (totalChars > 0) {
    const ids = wordIds(w);
    const lens = Uint32Array.from(w, (x) => x.length);
    for (const [k, limit] of Object.entries(o.max_top_ngram_chars)) {
      if (topNgramCharShare(ids, lens, Number(k), totalChars) > limit) return `max_top_ngram_chars.${k}`;
    }
    for (const [k, limit] of Object.entries(o.max_dup_ngram_chars)) {
      if (dupNgramCharShare(ids, lens, Number(k), totalChars) > limit) return `max_dup_ngram_chars.${k}`;
    }
  }
  if (o.min_stop_words > 0 && w.filter((x) => STOP_WORDS.has(x)).length < o.min_stop_words) return 'min_stop_words';
  if (o.script !== 'any') {
    const letters = text.replace(NOT_LETTER, '').length; // native replace: no per-character arrays
    const inScript = text.replace(NOT_IN_SCRIPT[o.script], '').length;
    if (letters > 0 && inScript / letters < o.min_script_share) return 'min_script_share';
  }
  return undefined;
}

/** Share of items that repeat an earlier item, and of the characters in those repeats. */
export function duplicateShare(items: string[]): { items: number; chars: number } {
  const seen = new Set<string>();
  let dupItems = 0, dupChars = 0, chars = 0;
  for (const it of items) {
    chars += it.length;
    if (seen.has(it)) {
      dupItems++;
      dupChars += it.length;
    } else {
      seen.add(it);
    }
  }
  return { items: items.length ? dupItems / items.length : 0, chars: chars ? dupChars / chars : 0 };
}

/** Each distinct word → a small integer, so n-grams are keyed by numbers instead of joined strings. */
function wordIds(w: string[]): Uint32Array {
  const ids = new Map<string, number>();
  return Uint32Array.from(w, (x) => {
    let id = ids.get(x);
    if (id === undefined) ids.set(x, (id = ids.size));
    return id;
  });
}

/** A 53-bit key of the n-gram starting at i (two independent 32-bit mixes; collisions negligible). */
function ngramKey(ids: Uint32Array, i: number, n: number): number {
  let h1 = 0x9e3779b9, h2 = 0x85ebca6b;
  for (let j = i; j < i + n; j++) {
    h1 = fmix32(h1 ^ ids[j]!);
    h2 = fmix32((h2 + ids[j]! + 0x27d4eb2f) >>> 0);
  }
  return h1 * 2097152 + (h2 & 0x1fffff);
}

/** Gopher: characters covered by the most frequent n-gram (counted once per occurrence) over all word characters. */
export function topNgramCharShare(ids: Uint32Array, lens: Uint32Array, n: number, totalChars: number): number {
  if (ids.length < n) return 0;
  const counts = new Map<number, { count: number; chars: number }>();
  for (let i = 0; i + n <= ids.length; i++) {
    const k = ngramKey(ids, i, n);
    const e = counts.get(k);
    if (e) e.count++;
    else {
      let chars = 0;
      for (let j = i; j < i + n; j++) chars += lens[j]!;
      counts.set(k, { count: 1, chars });
    }
  }
  let best = 0;
  for (const { count, chars } of counts.values()) if (count > 1) best = Math.max(best, count * chars);
  return best / totalChars;
}

/** Gopher: characters of words inside any n-gram that occurs more than once, over all word characters. */
export function dupNgramCharShare(ids: Uint32Array, lens: Uint32Array, n: number, totalChars: number): number {
  if (ids.length < n) return 0;
  const first = new Map<number, number>();
  const covered = new Uint8Array(ids.length);
  for (let i = 0; i + n <= ids.length; i++) {
    const k = ngramKey(ids, i, n);
    const at = first.get(k);
    if (at === undefined) {
      first.set(k, i);
      continue;
    }
    covered.fill(1, at, at + n);
    covered.fill(1, i, i + n);
  }
  let chars = 0;
  for (let i = 0; i < ids.length; i++) if (covered[i]) chars += lens[i]!;
  return chars / totalChars;
}
