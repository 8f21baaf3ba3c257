/**
 * Toxicity screening with a word/phrase list (C4 used LDNOOBW's list, shipped as data/badwords-en.txt).
 * Matching is by whole lower-cased words, phrases by consecutive words, so "class" never matches "ass".
 * Score = hits per word.
 */
import { readFileSync } from 'node:fs';
import { words } from './text.js';

export class WordList {
  private readonly phrases = new Set<string>();
  private readonly firstWords = new Set<string>(); // a phrase can only start at one of these
  readonly maxWords: number;

  constructor(entries: string[]) {
    let maxWords = 1;
    for (const e of entries) {
      const w = words(e);
      if (w.length === 0) continue;
      this.phrases.add(w.join(' '));
      this.firstWords.add(w[0]!);
      maxWords = Math.max(maxWords, w.length);
    }
    this.maxWords = maxWords;
  }

  static load(path: string): WordList {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new Error(`${path}: cannot read the toxicity word list (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    const list = new WordList(text.split('\n'));
    if (list.size === 0) throw new Error(`${path}: the toxicity word list has no entries`);
    return list;
  }

  get size(): number {
    return this.phrases.size;
  }

  /** Hits (non-overlapping, longest phrase first) and the matched phrases. */
  match(text: string): { hits: number; words: number; matched: string[] } {
    const w = words(text);
    const matched: string[] = [];
    for (let i = 0; i < w.length; ) {
      let len = 0;
      if (!this.firstWords.has(w[i]!)) {
        i++;
        continue;
      }
      for (let n = Math.min(this.maxWords, w.length - i); n >= 1; n--) {
        if (this.phrases.has(n === 1 ? w[i]! : w.slice(i, i + n).join(' '))) {
          len = n;
          break;
        }
      }
      if (len > 0) {
        matched.push(w.slice(i, i + len).join(' '));
        i += len;
      } else {
        i++;
      }
    }
    return { hits: matched.length, words: w.length, matched };
  }
}
