/**
 * Train/test overlap as in the GPT-3 paper (Brown et al. 2020, appendix C): text is lower-cased, split into
 * words with punctuation removed, and an eval item is "dirty" when any of its 13-grams occurs in the training
 * data. Items shorter than 13 words are dirty when their whole word sequence occurs in it.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { MANIFEST_FILE, readManifest } from '../checkpoint/manifest.js';
import { readShardMeta } from '../data/shards.js';
import { readText } from './read.js';

export const NGRAM = 13;

export function normalizeWords(text: string): string[] {
  return text.toLowerCase().replace(/[^\p{L}\p{N}\s]+/gu, ' ').split(/\s+/).filter(Boolean);
}

export class NgramIndex {
  private readonly grams = new Set<string>();
  /** Every normalised word sequence, space-joined with spaces around, for the short-item check. */
  private readonly joined: string[] = [];

  constructor(texts: Iterable<string>, readonly n = NGRAM) {
    for (const t of texts) {
      const w = normalizeWords(t);
      for (let i = 0; i + n <= w.length; i++) this.grams.add(w.slice(i, i + n).join(' '));
      this.joined.push(` ${w.join(' ')} `);
    }
  }

  static fromFiles(paths: string[]): NgramIndex {
    return new NgramIndex(paths.map((p) => (p.endsWith('.jsonl') ? jsonlText(readText(p)) : readText(p))));
  }

  get size(): number {
    return this.grams.size;
  }

  isDirty(text: string): boolean {
    const w = normalizeWords(text);
    if (!w.length) return false;
    if (w.length < this.n) {
      const needle = ` ${w.join(' ')} `;
      return this.joined.some((j) => j.includes(needle));
    }
    for (let i = 0; i + this.n <= w.length; i++) if (this.grams.has(w.slice(i, i + this.n).join(' '))) return true;
    return false;
  }
}

/** All string values of every JSONL row (pretraining {"text"}, Alpaca, chat, preference rows alike). */
function jsonlText(text: string): string {
  const parts: string[] = [];
  const walk = (v: unknown) => {
    if (typeof v === 'string') parts.push(v);
    else if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') Object.values(v).forEach(walk);
  };
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try { walk(JSON.parse(line)); } catch { parts.push(line); }
  }
  return parts.join('\n');
}

/**
 * The training corpora of a checkpoint and its ancestors, from their manifests: pretraining reads
 * config.data.dir (a `prepare` output whose meta.json lists its source files), sft / lora / dpo read
 * config.data.path. Files that no longer exist are left out (and named in `missing`).
 */
export function lineageCorpora(checkpointDir: string): { files: string[]; missing: string[] } {
  const files = new Set<string>(), missing = new Set<string>();
  const seen = new Set<string>();
  let dir: string | undefined = checkpointDir;
  while (dir && !seen.has(dir) && existsSync(join(dir, MANIFEST_FILE))) {
    seen.add(dir);
    const m = readManifest(dir);
    const data = (m.config as { data?: { dir?: unknown; path?: unknown } } | null)?.data;
    const add = (p: string) => (existsSync(p) ? files.add(p) : missing.add(p));
    if (typeof data?.path === 'string') add(data.path);
    if (typeof data?.dir === 'string') {
      if (existsSync(join(data.dir, 'meta.json'))) for (const s of readShardMeta(data.dir).sources) add(s.path);
      else missing.add(join(data.dir, 'meta.json'));
    }
    dir = m.parent?.path;
  }
  return { files: [...files], missing: [...missing] };
}
