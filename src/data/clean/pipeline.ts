/**
 * The cleaning pipeline: documents flow through the configured steps in order; each step may rewrite a
 * document's text or drop it. Every step counts documents and bytes in and out, plus its own details
 * (PII per type, quality rule per failure, …), and keeps the first N removed examples for a person to read.
 * Steps are streaming (one document at a time, in input order), so output is deterministic and does not
 * depend on how the input was chunked.
 */
import type { CleanConfig, CleanStepConfig, CleanStepName, LineDedupStepSchema } from '../../config/clean.js';
import { MinHashIndex } from './minhash.js';
import { normalizeText } from './normalize.js';
import { scrubPii } from './pii.js';
import { qualityFailure } from './quality.js';
import { contentKey } from './text.js';
import { WordList } from './toxicity.js';
import type { z } from 'zod';

/** A document: where it came from and its texts (one for plain text, one per message for chats). */
export interface Doc {
  id: string;
  parts: string[];
}

export interface StepReport {
  step: CleanStepName;
  docs_in: number;
  docs_out: number;
  bytes_in: number;
  bytes_out: number;
  /** Share of bytes this step removed (documents dropped or text cut). */
  removed: number;
  /** Time spent in this step (for documents/s and MB/s). */
  seconds: number;
  details: Record<string, number>;
}

export interface CleanSample {
  step: CleanStepName;
  id: string;
  /** Why it was removed (the quality rule, the PII type, …). */
  reason: string;
  /** The removed document, or the removed span(s) when the step only cut text. */
  removed: string;
}

/** What a step does to one document: a new text, or undefined to drop it, with the reason and what went. */
type StepResult = { parts: string[] | undefined; reason?: string; removed?: string[] };

interface Step {
  name: CleanStepName;
  run(doc: Doc): StepResult;
  details: Record<string, number>;
}

const bytesOf = (parts: string[]) => parts.reduce((s, p) => s + Buffer.byteLength(p), 0);

export class Cleaner {
  private readonly steps: Step[];
  private readonly counts: { docsIn: number; docsOut: number; bytesIn: number; bytesOut: number; ms: number }[];
  readonly samples: CleanSample[] = [];
  private readonly samplesPerStep: number;
  private readonly sampled: number[];

  constructor(cfg: CleanConfig) {
    this.steps = cfg.steps.map(makeStep);
    this.counts = this.steps.map(() => ({ docsIn: 0, docsOut: 0, bytesIn: 0, bytesOut: 0, ms: 0 }));
    this.samplesPerStep = cfg.samples;
    this.sampled = this.steps.map(() => 0);
  }

  /** Run one document through every step; undefined when a step dropped it. */
  process(doc: Doc): Doc | undefined {
    let parts = doc.parts;
    for (const [i, step] of this.steps.entries()) {
      const c = this.counts[i]!;
      const bytesIn = bytesOf(parts);
      c.docsIn++;
      c.bytesIn += bytesIn;
      const t0 = performance.now();
      const r = step.run({ id: doc.id, parts });
      c.ms += performance.now() - t0;
      if (r.removed?.length && this.sampled[i]! < this.samplesPerStep) {
        this.sampled[i]!++;
        this.samples.push({ step: step.name, id: doc.id, reason: r.reason ?? step.name, removed: r.removed.join('\n') });
      }
      if (r.parts === undefined) return undefined;
      parts = r.parts;
      c.docsOut++;
      c.bytesOut += bytesOf(parts);
    }
    return { id: doc.id, parts };
  }

  report(): StepReport[] {
    return this.steps.map((s, i) => {
      const c = this.counts[i]!;
      return { step: s.name, docs_in: c.docsIn, docs_out: c.docsOut, bytes_in: c.bytesIn, bytes_out: c.bytesOut, removed: c.bytesIn ? 1 - c.bytesOut / c.bytesIn : 0, seconds: c.ms / 1000, details: { ...s.details } };
    });
  }
}

function makeStep(cfg: CleanStepConfig): Step {
  const [name, o] = Object.entries(cfg)[0] as [CleanStepName, never];
  const details: Record<string, number> = {};
  const bump = (k: string, n = 1) => (details[k] = (details[k] ?? 0) + n);
  const builders: { [K in CleanStepName]: (o: NonNullable<CleanStepConfig[K]>) => Step['run'] } = {
    normalize: (o) => (doc) => {
      const out = doc.parts.map((p) => normalizeText(p, o));
      for (const r of out) {
        if (r.invalidUtf8) bump('invalid_utf8_chars', r.invalidUtf8);
        if (r.controlChars) bump('control_chars', r.controlChars);
      }
      if (out.some((r) => r.text === undefined && r.invalidUtf8 > 0 && o.invalid_utf8 === 'drop')) {
        bump('dropped_invalid_utf8');
        return { parts: undefined, reason: 'invalid_utf8', removed: doc.parts };
      }
      const parts = out.map((r) => r.text ?? '');
      if (parts.every((p) => p === '')) {
        bump('dropped_empty');
        return { parts: undefined, reason: 'empty', removed: doc.parts };
      }
      return { parts };
    },
    exact_dedup: (o) => {
      const seen = new Set<string>();
      return (doc) => {
        const text = doc.parts.join('\n');
        const key = contentKey(o.normalize ? text.toLowerCase().replace(/\s+/g, ' ').trim() : text);
        if (seen.has(key)) return { parts: undefined, reason: 'duplicate', removed: doc.parts };
        seen.add(key);
        return { parts: doc.parts };
      };
    },
    line_dedup: (o) => lineDedup(o, bump),
    near_dedup: (o) => {
      const index = new MinHashIndex({ shingleSize: o.shingle_size, bands: o.bands, rows: o.rows, threshold: o.threshold, maxDocs: o.max_index_docs, seed: o.seed });
      return (doc) => {
        const sim = index.add(doc.parts.join('\n'));
        details.index_evictions = index.evicted;
        if (sim === undefined) return { parts: doc.parts };
        return { parts: undefined, reason: `near_duplicate (estimated Jaccard ${sim.toFixed(2)})`, removed: doc.parts };
      };
    },
    quality: (o) => (doc) => {
      const rule = qualityFailure(doc.parts.join('\n'), o);
      if (rule === undefined) return { parts: doc.parts };
      bump(rule);
      return { parts: undefined, reason: rule, removed: doc.parts };
    },
    pii: (o) => (doc) => {
      const found: string[] = [];
      const reasons = new Set<string>();
      const parts = doc.parts.map((p) => {
        const r = scrubPii(p, o.types);
        for (const [t, n] of Object.entries(r.counts)) {
          bump(t, n);
          reasons.add(t);
        }
        found.push(...r.found);
        return r.text;
      });
      return { parts, reason: [...reasons].join('+'), removed: found };
    },
    toxicity: (o) => {
      const list = WordList.load(o.word_list);
      return (doc) => {
        const m = list.match(doc.parts.join('\n'));
        const score = m.hits / Math.max(1, m.words);
        if (m.hits === 0 || score < o.threshold) return { parts: doc.parts };
        bump('flagged');
        const reason = `score ${score.toFixed(3)}: ${[...new Set(m.matched)].slice(0, 5).join(', ')}`;
        return { parts: o.mode === 'drop' ? undefined : doc.parts, reason, removed: doc.parts };
      };
    },
  };
  return { name, run: (builders[name] as (o: never) => Step['run'])(o), details };
}

/**
 * Boilerplate removal: a line (or paragraph) of at least min_chars counts once per document; from the
 * document in which it reaches min_docs on, its copies are cut. Single pass, so the first min_docs − 1
 * copies stay (like CCNet's streaming paragraph dedup); the index is bounded (oldest entries forgotten).
 */
function lineDedup(o: z.infer<typeof LineDedupStepSchema>, bump: (k: string, n?: number) => void): Step['run'] {
  const seenIn = new Map<string, number>(); // unit key → documents it appeared in
  const sep = o.unit === 'line' ? '\n' : '\n\n';
  return (doc) => {
    const inThisDoc = new Set<string>();
    const removed: string[] = [];
    const parts = doc.parts.map((p) => {
      const kept: string[] = [];
      for (const unit of p.split(sep)) {
        const t = unit.trim();
        if (t.length < o.min_chars) {
          kept.push(unit);
          continue;
        }
        const key = contentKey(t);
        if (!inThisDoc.has(key)) {
          inThisDoc.add(key);
          seenIn.set(key, (seenIn.get(key) ?? 0) + 1);
          if (seenIn.size > o.max_index_entries) seenIn.delete(seenIn.keys().next().value!);
        }
        if ((seenIn.get(key) ?? 0) >= o.min_docs) removed.push(t);
        else kept.push(unit);
      }
      return kept.join(sep);
    });
    if (removed.length === 0) return { parts: doc.parts };
    bump('units_removed', removed.length);
    if (parts.every((p) => p.trim() === '')) {
      bump('dropped_empty');
      return { parts: undefined, reason: 'only boilerplate', removed };
    }
    return { parts, reason: 'boilerplate', removed };
  };
}
