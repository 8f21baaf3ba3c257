/**
 * Corpus cleaning throughput: documents/s and MB/s of each step and of the whole pipeline, on a corpus of
 * at least 50 MB built from the shipped texts by repetition with edits (so the dedup steps have real work),
 * with peak RSS and the near-dup index bound; then the counts on the real corpora (the shipped ones pass
 * almost untouched; the HH-RLHF transcripts go through the toxicity step).
 *
 *   node --import tsx bench/clean.ts [--mb 50]
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CleanOnlyConfigSchema, CleanSchema } from '../src/config/clean.js';
import { cleanCorpus } from '../src/data/clean/corpus.js';
import type { StepReport } from '../src/data/clean/pipeline.js';
import { Rng } from '../src/util/rng.js';

const mb = Number(process.argv[process.argv.indexOf('--mb') + 1] ?? 50) || 50;
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-bench-clean-'));
const ALL = { steps: [{ normalize: null }, { exact_dedup: null }, { near_dedup: null }, { line_dedup: null }, { quality: null }, { pii: null }, { toxicity: { mode: 'tag' } }] };

let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);

function table(steps: StepReport[]): void {
  console.log('| step | docs in | docs out | MB in | removed | docs/s | MB/s | details |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const s of steps) {
    const details = Object.entries(s.details).map(([k, v]) => `${k}=${v}`).join(' ');
    console.log(`| ${s.step} | ${s.docs_in.toLocaleString('en-US')} | ${s.docs_out.toLocaleString('en-US')} | ${(s.bytes_in / 1e6).toFixed(1)} | ${(100 * s.removed).toFixed(2)} % | ${Math.round(s.docs_in / s.seconds).toLocaleString('en-US')} | ${(s.bytes_in / 1e6 / s.seconds).toFixed(1)} | ${details} |`);
  }
}

// 1. A ≥ 50 MB web-like corpus built from the shipped texts: a new document is 3–8 consecutive paragraphs with a
// quarter of its words swapped for random vocabulary words (so copies of the small pool are distinct texts);
// 20 % of documents repeat an earlier one exactly, 20 % with a few words changed; a third carry a footer.
const shakespeare = readFileSync('data/tinyshakespeare.txt', 'utf8').split('\n\n');
const alpaca = readFileSync('data/alpaca_en_demo.jsonl', 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { output: string }).output);
const pool = [...shakespeare, ...alpaca];
const vocab = [...new Set(pool.join(' ').split(/\s+/))];
const rng = new Rng(1);
const pick = <T>(a: T[]) => a[rng.nextU32() % a.length]!;
const docs: string[] = [];
let bytes = 0;
while (bytes < mb * 1e6) {
  const r = rng.nextU32() % 10;
  let doc: string;
  if (r < 2 && docs.length > 0) doc = pick(docs);
  else if (r < 4 && docs.length > 0) doc = pick(docs).split(' ').map((w) => (rng.nextU32() % 40 === 0 ? 'edited' : w)).join(' ');
  else {
    const at = rng.nextU32() % pool.length;
    doc = pool.slice(at, at + 3 + (rng.nextU32() % 6)).join('\n\n').split(' ').map((w) => (rng.nextU32() % 4 === 0 ? pick(vocab) : w)).join(' ');
  }
  if (r % 3 === 0) doc += '\n\nCopyright 2024 Example Media Group. All rights reserved. Terms of use apply.';
  docs.push(doc);
  bytes += Buffer.byteLength(doc) + 1;
}
const corpus = join(TMP, 'corpus.jsonl');
writeFileSync(corpus, docs.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
docs.length = 0;
console.log(`corpus: ${(bytes / 1e6).toFixed(1)} MB, built in ${TMP}`);

const r = await cleanCorpus(CleanOnlyConfigSchema.parse({ inputs: [corpus], out: join(TMP, 'out.jsonl'), clean: ALL }));
const stepSeconds = r.steps.reduce((s, x) => s + x.seconds, 0);
console.log(`\nwhole pipeline: ${r.docsIn.toLocaleString('en-US')} docs, ${(r.bytesIn / 1e6).toFixed(1)} MB in ${r.seconds.toFixed(1)} s (steps ${stepSeconds.toFixed(1)} s, reading/writing the rest): ` +
  `${Math.round(r.docsIn / r.seconds).toLocaleString('en-US')} docs/s, ${(r.bytesIn / 1e6 / r.seconds).toFixed(2)} MB/s; kept ${(100 * r.bytesOut / r.bytesIn).toFixed(1)} % of the bytes`);
const near = CleanSchema.parse(ALL).steps.find((s) => 'near_dedup' in s)!.near_dedup!;
console.log(`peak RSS ${(peakRss / 1e9).toFixed(2)} GB (the corpus itself is built in memory first); near-dup index bound: ${near.max_index_docs.toLocaleString('en-US')} docs × ${near.bands}×${near.rows} hashes ≈ ${((near.max_index_docs * (4 * near.bands * near.rows + 8 * near.bands + 60 * near.bands)) / 1e6).toFixed(0)} MB\n`);
table(r.steps);

// 2. Real corpora with the shipped configs' steps.
const real: [string, string, unknown][] = [
  ['tiny Shakespeare (configs/clean.yaml steps)', 'data/tinyshakespeare.txt', { steps: [{ normalize: null }, { exact_dedup: null }, { near_dedup: null }, { line_dedup: null }, { quality: { min_words: 3, min_stop_words: 0, min_punct_lines: 0, max_top_ngram_chars: { '2': 0.3, '3': 0.3, '4': 0.3 } } }, { pii: null }, { toxicity: { mode: 'tag' } }] }],
  ['Alpaca demo (instruction data, every step at defaults except quality)', 'data/alpaca_en_demo.jsonl', { steps: [{ normalize: null }, { exact_dedup: null }, { near_dedup: null }, { pii: null }, { toxicity: { mode: 'tag' } }] }],
];
const hh = '../shared/data/preference/hh_rlhf_harmless_base_test.jsonl';
if (existsSync(hh)) real.push(['HH-RLHF harmless-base test, chosen transcripts (toxicity screening)', hh, { steps: [{ normalize: null }, { toxicity: { mode: 'tag' } }] }]);
for (const [name, path, clean] of real) {
  const out = await cleanCorpus(CleanOnlyConfigSchema.parse({ inputs: [path], text_field: path.includes('hh_rlhf') ? 'chosen' : 'output', out: join(TMP, 'real.jsonl'), clean }));
  console.log(`\n${name}: ${out.docsIn.toLocaleString('en-US')} → ${out.docsOut.toLocaleString('en-US')} docs, ${out.bytesIn.toLocaleString('en-US')} → ${out.bytesOut.toLocaleString('en-US')} bytes (${(100 * (1 - out.bytesOut / out.bytesIn)).toFixed(2)} % removed)`);
  table(out.steps);
}
clearInterval(sampler);
rmSync(TMP, { recursive: true, force: true });
