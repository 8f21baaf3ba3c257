/**
 * Corpus cleaning (`clean:` steps of prepare, and `llmctl clean`): exact expectations on hand-built
 * documents for each step, determinism across runs and chunk sizes, the Shakespeare-with-duplicates
 * recovery, prepare's report in meta.json, and one-line errors for bad configs.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CleanOnlyConfigSchema, QualityStepSchema } from '../src/config/clean.js';
import { PrepareConfigSchema } from '../src/config/stages.js';
import { cleanCorpus } from '../src/data/clean/corpus.js';
import { MinHashIndex } from '../src/data/clean/minhash.js';
import { normalizeText } from '../src/data/clean/normalize.js';
import { luhnValid, scrubPii } from '../src/data/clean/pii.js';
import { Cleaner } from '../src/data/clean/pipeline.js';
import { qualityFailure } from '../src/data/clean/quality.js';
import { WordList } from '../src/data/clean/toxicity.js';
import { prepare } from '../src/data/prepare.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { Rng } from '../src/util/rng.js';
import { REPO, SHAKESPEARE_PATH } from './paths.js';

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-clean-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

const GOOD = 'The museum opened its new wing to the public on Saturday morning. Visitors lined up early to see the collection of old photographs, which had been stored in the archive for nearly forty years. The curator said that the exhibition was planned with care and that every print had been restored by hand. Many families brought their children, and the staff handed out printed guides with maps of the rooms. The café on the ground floor stayed open late, and the gift shop sold postcards of the most popular images.';
const Q = QualityStepSchema.parse({});

/** Distinct made-up words (no stop words), so a test controls exactly which n-grams repeat. */
function fillers(n: number, from = 0): string[] {
  const out: string[] = [];
  for (let i = from; i < from + n; i++) {
    let w = '', x = i;
    do {
      w += 'bcdfghjklmnpqrstvwz'[x % 19] + 'aeiou'[Math.floor(x / 19) % 5];
      x = Math.floor(x / 95);
    } while (x > 0);
    out.push(w + 'ron');
  }
  return out;
}

describe('normalize', () => {
  test('NFC, CRLF, odd spaces, trailing spaces, control and zero-width characters, invalid UTF-8', () => {
    const raw = 'Cafe\u0301 line\r\nnext\u00a0word  \r\n\r\n\r\n\r\nzero\u200bwidth\u0007 bell\uFFFD!';
    const r = normalizeText(raw, { nfc: true, whitespace: true, control_chars: true, invalid_utf8: 'repair' });
    assert.equal(r.text, 'Café line\nnext word\n\nzerowidth bell!');
    assert.equal(r.invalidUtf8, 1);
    assert.equal(r.controlChars, 2);
    assert.equal(normalizeText('bad \uFFFD byte', { nfc: true, whitespace: true, control_chars: true, invalid_utf8: 'drop' }).text, undefined);
    assert.equal(normalizeText(' \u200b \r\n', { nfc: true, whitespace: true, control_chars: true, invalid_utf8: 'repair' }).text, undefined);
  });
});

describe('deduplication', () => {
  test('exact (after case/whitespace folding) and near duplicates (a few words edited) are removed; distinct documents stay', () => {
    const base = GOOD;
    const other = 'A storm moved across the northern hills late on Tuesday, bringing heavy rain and strong winds to the valley towns. Farmers had moved their animals to higher ground the day before, and the river rose slowly through the night. By morning the roads near the bridge were closed, and volunteers filled sandbags outside the school while the council opened the hall as a shelter for anyone who needed a dry place to sleep.';
    const edited = base.replace('Saturday', 'Sunday').replace('forty', 'fifty');
    const third = 'Chess clubs across the country reported a rise in new members this winter. Coaches said that online games had drawn many young players to the board, and that weekend tournaments were fuller than at any time in the past decade. Several clubs have started evening classes for beginners, and the national federation plans to publish a new guide to the rules for schools and libraries next spring.';
    const cleaner = new Cleaner({ steps: [{ normalize: {} as never }, { exact_dedup: { normalize: true } }, { near_dedup: { shingle_size: 5, bands: 14, rows: 8, threshold: 0.72, max_index_docs: 1000, seed: 1 } }], samples: 10 });
    const docs = [base, other, base.toUpperCase().replace(/ /g, '  '), edited, third, other];
    const kept = docs.map((t, i) => cleaner.process({ id: `d${i}`, parts: [t] }) !== undefined);
    assert.deepEqual(kept, [true, true, false, false, true, false]);
    const report = cleaner.report();
    assert.deepEqual(report.map((s) => [s.step, s.docs_in, s.docs_out]), [['normalize', 6, 6], ['exact_dedup', 6, 4], ['near_dedup', 4, 3]]);
    assert.deepEqual(cleaner.samples.map((s) => [s.step, s.id]), [['exact_dedup', 'd2'], ['near_dedup', 'd3'], ['exact_dedup', 'd5']]);
  });

  test('MinHash estimates Jaccard similarity: identical 1, disjoint ~0, and a bounded FIFO index', () => {
    const idx = new MinHashIndex({ shingleSize: 2, bands: 16, rows: 8, threshold: 0.8, maxDocs: 2, seed: 3 });
    const a = idx.signature('one two three four five six seven eight nine ten');
    assert.equal(MinHashIndex.similarity(a, idx.signature('one two three four five six seven eight nine ten')), 1);
    // 9 shingles each, 8 shared after one edit at the end: J = 8/10 = 0.8; the 128-hash estimate is within ±0.15.
    const j = MinHashIndex.similarity(a, idx.signature('one two three four five six seven eight nine eleven'));
    assert.ok(Math.abs(j - 0.8) < 0.15, `estimate ${j}`);
    assert.ok(MinHashIndex.similarity(a, idx.signature('alpha beta gamma delta epsilon zeta eta theta iota kappa')) < 0.1);
    // Capacity 2: the first document leaves the index when the third arrives, so its duplicate is new again.
    assert.equal(idx.add('red green blue'), undefined);
    assert.equal(idx.add('cat dog bird'), undefined);
    assert.equal(idx.add('sun moon star'), undefined);
    assert.equal(idx.size, 2);
    assert.equal(idx.evicted, 1);
    assert.equal(idx.add('red green blue'), undefined);
    assert.equal(idx.add('sun moon star'), 1);
  });

  test('line dedup removes boilerplate lines once they reach min_docs documents, never short lines', () => {
    const footer = 'Copyright 2024 Example Corp. All rights reserved worldwide.';
    const cleaner = new Cleaner({ steps: [{ line_dedup: { min_docs: 2, min_chars: 32, unit: 'line', max_index_entries: 100 } }], samples: 5 });
    const out = [`First story.\nSpeaker:\n${footer}`, `Second story.\nSpeaker:\n${footer}`, `Third.\n${footer}`, footer].map((t, i) => cleaner.process({ id: `d${i}`, parts: [t] })?.parts[0]);
    assert.deepEqual(out, [`First story.\nSpeaker:\n${footer}`, 'Second story.\nSpeaker:', 'Third.', undefined]);
    assert.equal(cleaner.report()[0]!.details.units_removed, 3);
  });
});

describe('PII', () => {
  test('each type becomes its placeholder; look-alikes survive untouched', () => {
    const text = 'Mail jane.doe@example.com or call +1 (555) 123-4567 or 555-123-4567. Server 192.168.1.20 and fe80::1ff:fe23:4567:890a. ' +
      'Card 4111 1111 1111 1111 and 5500-0000-0000-0004. Clone https://bob:s3cret@git.example.com/x.git now.';
    const r = scrubPii(text, ['email', 'phone', 'ip', 'credit_card', 'url_credentials']);
    assert.equal(r.text, 'Mail <EMAIL> or call <PHONE> or <PHONE>. Server <IP_ADDRESS> and <IP_ADDRESS>. ' +
      'Card <CREDIT_CARD> and <CREDIT_CARD>. Clone https://<CREDENTIALS>@git.example.com/x.git now.');
    assert.deepEqual(r.counts, { url_credentials: 1, email: 1, credit_card: 2, ip: 2, phone: 2 });
    const lookAlikes = 'Version 1.2.3, v10.0.19045 and 1.2.3.4.5; Python 3.11.7. On 2024-01-15 at 12:30:45 (15/01/2024) it cost $1,234.56 or 1,000,000 yen. ' +
      'Order 4111 1111 1111 1112 failed its checksum; std::vector and a::b are code; call me at 5 pm; room 101-B; pi is 3.14159265358979.';
    const s = scrubPii(lookAlikes, ['email', 'phone', 'ip', 'credit_card', 'url_credentials']);
    assert.equal(s.text, lookAlikes);
    assert.deepEqual(s.counts, {});
  });

  test('Luhn check', () => {
    assert.equal(luhnValid('4111111111111111'), true);
    assert.equal(luhnValid('4111111111111112'), false);
    assert.equal(luhnValid('79927398713'), true);
  });
});

describe('quality rules (Gopher / C4 defaults)', () => {
  const line = (ws: string[]) => ws.join(' ') + '.';
  test('a normal paragraph passes every rule', () => {
    assert.equal(qualityFailure(GOOD, Q), undefined);
  });
  const failing: [string, string][] = [
    ['min_words', 'Too short a note, with the words.'],
    ['max_words', 'the and '.repeat(50_001)],
    ['min_mean_word_length', line(Array.from({ length: 60 }, (_, i) => ['a', 'to', 'be', 'of', 'I', 'at'][i % 6]!))],
    ['max_mean_word_length', line(['the', 'and', ...fillers(58).map((w) => w + 'extraordinarily')])],
    ['max_symbol_word_ratio', GOOD + ' #news #art #city #photo #museum #weekend #family #history #archive #print #film #book #music #food #travel.'],
    ['max_bullet_lines', GOOD.split('. ').map((s) => `- ${s}.`).join('\n')],
    ['max_ellipsis_lines', GOOD.split('. ').map((s) => `${s}...`).join('\n')],
    ['min_punct_lines', GOOD.replace(/[.,]/g, '').split(/(?<=morning|years|hand|rooms|images)/).join('\n')],
    ['max_duplicate_lines', [...GOOD.split('. ').map((s) => s + '.'), ...Array(4).fill('Visit us again soon.')].join('\n')],
    ['max_duplicate_line_chars', [...['Hi there.', 'Welcome.', 'Read on.', 'Thanks.'], GOOD, GOOD].join('\n')],
    ['max_top_ngram_chars.2', GOOD + ' red car'.repeat(25) + '.'],
    ['max_top_ngram_chars.3', line(['the', 'and', ...Array.from({ length: 16 }, (_, i) => ['alpha', 'beta', 'gamma', ...fillers(7, 7 * i)]).flat()])],
    ['max_top_ngram_chars.4', line(['the', 'and', ...Array.from({ length: 10 }, (_, i) => ['alpha', 'beta', 'gamma', 'delta', ...fillers(12, 12 * i)]).flat()])],
    ['max_dup_ngram_chars.5', line(['the', 'and', 'alpha', 'beta', 'gamma', 'delta', 'omega', ...fillers(40), 'alpha', 'beta', 'gamma', 'delta', 'omega'])],
    ['min_stop_words', line(fillers(60))],
    ['min_script_share', 'The and the. Москва является столицей России и крупнейшим городом страны. В центре города находится Кремль, окружённый старыми стенами и башнями. Летом по широким улицам гуляют жители и туристы, а зимой на площадях заливают катки. Метро соединяет районы быстро и удобно, поэтому многие оставляют машины дома. Вечером в театрах идут спектакли, в парках играет музыка, и река отражает огни мостов.'],
  ];
  for (const [rule, doc] of failing) {
    test(`${rule}: triggered by a document built to fail it`, () => assert.equal(qualityFailure(doc, Q), rule));
  }
});

describe('toxicity', () => {
  test('whole words and phrases only, score = hits per word, drop or tag', () => {
    const list = new WordList(['darn', 'heck no', 'two word phrase']);
    assert.deepEqual(list.match('Darn it. Heck no! Darnation and heckle are fine; a two word phrase too.'), { hits: 3, words: 14, matched: ['darn', 'heck no', 'two word phrase'] });
    const path = join(TMP, 'words.txt');
    writeFileSync(path, 'darn\nheck no\n');
    const drop = new Cleaner({ steps: [{ toxicity: { word_list: path, threshold: 0.1, mode: 'drop' } }], samples: 0 });
    assert.equal(drop.process({ id: 'a', parts: ['darn darn it all'] }), undefined); // 2 hits / 4 words
    assert.ok(drop.process({ id: 'b', parts: ['darn, said the man who fixed the old blue car today'] })); // 1/11 < 0.1
    const tag = new Cleaner({ steps: [{ toxicity: { word_list: path, threshold: 0.1, mode: 'tag' } }], samples: 0 });
    assert.ok(tag.process({ id: 'a', parts: ['darn darn it all'] }));
    assert.equal(tag.report()[0]!.details.flagged, 1);
  });
});

describe('llmctl clean / prepare with clean:', () => {
  const ALL_STEPS = { steps: [{ normalize: null }, { exact_dedup: null }, { near_dedup: null }, { line_dedup: null }, { quality: { min_words: 3, min_stop_words: 0, min_punct_lines: 0 } }, { pii: null }, { toxicity: { mode: 'tag' } }] };

  test('output is identical across runs and across read chunk sizes', async () => {
    const input = join(TMP, 'mixed.txt');
    writeFileSync(input, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 60_000).replace(/\n/g, '\r\n') + '\r\n\r\ncontact me: someone@example.org\r\n');
    const outs: string[] = [];
    for (const chunkSize of [7, 1 << 16, 1 << 16]) {
      const cfg = CleanOnlyConfigSchema.parse({ inputs: [input], out: join(TMP, `mixed-${chunkSize}.jsonl`), clean: ALL_STEPS });
      await cleanCorpus(cfg, { chunkSize });
      outs.push(readFileSync(cfg.out, 'utf8'));
    }
    assert.equal(outs[0], outs[1]);
    assert.equal(outs[1], outs[2]);
    assert.match(outs[0]!, /contact me: <EMAIL>/);
    assert.doesNotMatch(outs[0]!, /\r/);
  });

  test('tiny Shakespeare plus shuffled duplicates and near-duplicates of its own paragraphs comes back within 1 % of its size', async () => {
    const text = readFileSync(SHAKESPEARE_PATH, 'utf8');
    const paras = text.split('\n\n');
    const rng = new Rng(7);
    const extra: string[] = [];
    for (let i = 0; i < 1500; i++) extra.push(paras[rng.nextU32() % paras.length]!); // exact copies
    const long = paras.filter((p) => p.split(/\s+/).length >= 120);
    for (let i = 0; i < 200; i++) {
      // Each long paragraph at most once: two differently edited copies of one paragraph are further apart
      // from each other (4 edits) than from their original.
      const w = long.splice(rng.nextU32() % long.length, 1)[0]!.split(' ');
      for (let e = 0; e < 2; e++) w[rng.nextU32() % w.length] = 'EDITED'; // two words changed
      extra.push(w.join(' '));
    }
    const mixed = [...paras];
    for (const p of extra) mixed.splice(rng.nextU32() % (mixed.length + 1), 0, p);
    const input = join(TMP, 'dirty.txt');
    writeFileSync(input, mixed.join('\n\n'));
    const steps = { steps: [{ normalize: null }, { exact_dedup: null }, { near_dedup: null }] };
    const clean = async (path: string, out: string) => {
      return cleanCorpus(CleanOnlyConfigSchema.parse({ inputs: [path], out: join(TMP, out), clean: steps }));
    };
    const { bytesIn, bytesOut: original } = await clean(SHAKESPEARE_PATH, 'orig.jsonl');
    const dirtyBytes = Buffer.byteLength(mixed.join('\n\n'));
    const recovered = (await clean(input, 'dirty.jsonl')).bytesOut;
    assert.ok(dirtyBytes > 1.2 * Buffer.byteLength(text), `the dirty corpus is ${dirtyBytes} bytes`);
    assert.ok(Math.abs(recovered / original - 1) < 0.01, `recovered ${recovered} vs ${original} bytes (${((recovered / original - 1) * 100).toFixed(2)} %)`);
    assert.ok(original > 0.99 * bytesIn, `the shipped corpus itself passes almost untouched (${bytesIn} → ${original} bytes)`);
  });

  test('prepare with a clean: section tokenizes the cleaned text and stores the report and samples', async () => {
    const input = join(TMP, 'docs.jsonl');
    const rows = [GOOD, GOOD, 'Reach me at jane@example.com today, please, with the news.', 'ok'];
    writeFileSync(input, rows.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
    const out = join(TMP, 'prep');
    const cfg = PrepareConfigSchema.parse({ inputs: [input], out_dir: out, tokenizer: { train: { vocab_size: 300 } }, val_fraction: 0, clean: { ...ALL_STEPS, samples: 2 } });
    const r = await prepare(cfg);
    const meta = JSON.parse(readFileSync(join(out, 'meta.json'), 'utf8'));
    assert.deepEqual(meta.clean.map((s: { step: string; docs_out: number }) => [s.step, s.docs_out]), [['normalize', 4], ['exact_dedup', 3], ['near_dedup', 3], ['line_dedup', 3], ['quality', 2], ['pii', 2], ['toxicity', 2]]);
    assert.equal(meta.clean.find((s: { step: string }) => s.step === 'pii').details.email, 1);
    const samples = readFileSync(join(out, 'clean-samples.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(samples.map((s) => [s.step, s.reason]), [['exact_dedup', 'duplicate'], ['pii', 'email'], ['quality', 'min_words']]);
    // Tokens: the two kept documents, cleaned, each followed by <|endoftext|>.
    const tok = Tokenizer.load(out);
    assert.equal(r.trainTokens, [GOOD, 'Reach me at <EMAIL> today, please, with the news.'].reduce((s, t) => s + tok.encode(t, { allowSpecial: false }).length + 1, 0));
  });

  test('bad configs: one line naming the field, exit 2', () => {
    const run = (yaml: string) => {
      const path = join(TMP, `bad-${Math.random().toString(36).slice(2)}.yaml`);
      writeFileSync(path, yaml);
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'clean', '--config', path], { cwd: REPO, encoding: 'utf8' });
      return { code: r.status, err: r.stderr.split('\n').filter((l) => l && !l.startsWith('{')) };
    };
    const head = `inputs: [${SHAKESPEARE_PATH}]\nout: ${join(TMP, 'x.jsonl')}\nclean:\n  steps:\n`;
    let r = run(head + '    - quality: {max_bullet_lines: 1.5}\n');
    assert.equal(r.code, 2);
    assert.equal(r.err.length, 1);
    assert.match(r.err[0]!, /bad-.*\.yaml: clean\.steps\[0\]\.quality\.max_bullet_lines: must be <= 1$/);
    r = run(head + '    - near_dedupe: {}\n');
    assert.equal(r.code, 2);
    assert.match(r.err[0]!, /clean\.steps\[0\]\.near_dedupe: unknown step \(steps: normalize, exact_dedup, line_dedup, near_dedup, quality, pii, toxicity\)$/);
    r = run(head + `    - toxicity: {word_list: ${join(TMP, 'missing-words.txt')}}\n`);
    assert.equal(r.code, 2);
    assert.match(r.err[0]!, /missing-words\.txt: cannot read the toxicity word list \(ENOENT\)/);
    assert.equal(r.err.length, 1);
  });
});
