/**
 * `llmctl clean`: read text / JSONL inputs, run the cleaning pipeline, write the cleaned corpus as JSONL
 * (plain-text documents as {"text"}, JSONL rows as they were with their text or message contents cleaned),
 * a report beside it, and optionally the removed samples. The output is written to a temporary file and
 * renamed, so a crash never leaves half a corpus.
 */
import { closeSync, createReadStream, openSync, renameSync, statSync, writeFileSync, writeSync } from 'node:fs';
import type { CleanOnlyConfig } from '../../config/clean.js';
import { streamJsonlRows } from '../input.js';
import { type CleanSample, Cleaner, type StepReport } from './pipeline.js';

/** One input document: its id, its texts, and how to write it back. */
export interface SourceDoc {
  id: string;
  parts: string[];
  rebuild: (parts: string[]) => unknown;
}

/** Documents of one input: JSONL rows (`text_field` or a `messages` list), or text cut at blank lines. */
export async function* readDocuments(path: string, o: { textField: string; textUnit: 'paragraph' | 'file'; chunkSize?: number }): AsyncGenerator<SourceDoc> {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read input (${(err as NodeJS.ErrnoException).code})`);
  }
  if (st.isDirectory()) throw new Error(`${path}: is a directory; list the files in inputs`);
  if (path.endsWith('.jsonl')) {
    for await (const { value, line } of streamJsonlRows(path)) {
      const row = value as Record<string, unknown>;
      const id = `${path}:${line}`;
      const text = row[o.textField];
      if (typeof text === 'string') {
        yield { id, parts: [text], rebuild: (p) => ({ ...row, [o.textField]: p[0] }) };
      } else if (Array.isArray(row.messages) && row.messages.every((m) => typeof (m as { content?: unknown })?.content === 'string')) {
        const msgs = row.messages as { content: string }[];
        yield { id, parts: msgs.map((m) => m.content), rebuild: (p) => ({ ...row, messages: msgs.map((m, i) => ({ ...m, content: p[i] })) }) };
      } else {
        throw new Error(`${path}: line ${line}: field '${o.textField}' is missing or not a string (and no 'messages' list of {content})`);
      }
    }
    return;
  }
  let carry = '', n = 0, pendingCR = false;
  const asDoc = (text: string): SourceDoc => ({ id: `${path}#${++n}`, parts: [text], rebuild: (p) => ({ text: p[0] }) });
  for await (const chunk of createReadStream(path, { encoding: 'utf8', highWaterMark: o.chunkSize ?? 1 << 16 })) {
    // CRLF → LF; a chunk that ends in \r waits for the next one, which may start with its \n.
    let c: string = (pendingCR ? '\r' : '') + (chunk as string);
    pendingCR = c.endsWith('\r');
    if (pendingCR) c = c.slice(0, -1);
    carry += c.replace(/\r\n?/g, '\n');
    if (o.textUnit === 'file') continue;
    let cut: number;
    while ((cut = carry.indexOf('\n\n')) >= 0) {
      const para = carry.slice(0, cut);
      carry = carry.slice(cut + 2);
      if (para.trim()) yield asDoc(para);
    }
  }
  if (pendingCR) carry += '\n';
  if (carry.trim()) yield asDoc(carry);
}

export interface CleanResult {
  out: string;
  docsIn: number;
  docsOut: number;
  bytesIn: number;
  bytesOut: number;
  steps: StepReport[];
  samples: CleanSample[];
  seconds: number;
}

export async function cleanCorpus(cfg: CleanOnlyConfig, o: { chunkSize?: number } = {}): Promise<CleanResult> {
  const t0 = performance.now();
  const cleaner = new Cleaner(cfg.clean);
  const tmp = `${cfg.out}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  let docsIn = 0, docsOut = 0, bytesIn = 0, bytesOut = 0;
  try {
    for (const path of cfg.inputs) {
      for await (const doc of readDocuments(path, { textField: cfg.text_field, textUnit: cfg.text_unit, chunkSize: o.chunkSize })) {
        docsIn++;
        bytesIn += doc.parts.reduce((s, p) => s + Buffer.byteLength(p), 0);
        const kept = cleaner.process(doc);
        if (!kept) continue;
        docsOut++;
        bytesOut += kept.parts.reduce((s, p) => s + Buffer.byteLength(p), 0);
        writeSync(fd, JSON.stringify(doc.rebuild(kept.parts)) + '\n');
      }
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, cfg.out);
  const result: CleanResult = { out: cfg.out, docsIn, docsOut, bytesIn, bytesOut, steps: cleaner.report(), samples: cleaner.samples, seconds: (performance.now() - t0) / 1000 };
  writeFileSync(`${cfg.out}.report.json`, JSON.stringify({ inputs: cfg.inputs, docs_in: docsIn, docs_out: docsOut, bytes_in: bytesIn, bytes_out: bytesOut, steps: result.steps, config: cfg.clean }, null, 2) + '\n');
  if (cfg.clean.samples > 0) writeSamples(`${cfg.out}.samples.jsonl`, cleaner.samples);
  return result;
}

export function writeSamples(path: string, samples: CleanSample[]): void {
  writeFileSync(path, samples.map((s) => JSON.stringify(s)).join('\n') + (samples.length ? '\n' : ''));
}
