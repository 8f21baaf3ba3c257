/**
 * `prepare` and the SFT reader on the inputs a newcomer actually has (issue 7): CRLF text, text without
 * blank lines, a UTF-8 BOM, binary or empty files, directories. The split honours val_fraction on any
 * text, and every bad input is one error naming the file.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PrepareConfigSchema } from '../src/config/stages.js';
import { prepare } from '../src/data/prepare.js';
import { loadSplit } from '../src/data/shards.js';
import { readSftJsonl } from '../src/data/sft.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { InputError } from '../src/util/errors.js';
import { setupLogger } from '../src/util/log.js';
import { ALPACA_30 } from './finetune-fixtures.js';
import { SHAKESPEARE_PATH } from './paths.js';

setupLogger('silent');
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-data-input-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;

const SAMPLE = readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 8000);
/** The shared tokenizer of these tests (trained once, reused with tokenizer.from). */
const TOK_DIR = join(TMP, 'tok');
const tokReady = prepare(PrepareConfigSchema.parse({ inputs: [write('tok.txt', SAMPLE)], out_dir: TOK_DIR, tokenizer: { train: { vocab_size: 300 } } }));

function write(name: string, content: string | Buffer): string {
  const path = join(TMP, name);
  writeFileSync(path, content);
  return path;
}

async function run(input: string, valFraction = 0.1) {
  await tokReady;
  const out = join(TMP, `out-${n++}`);
  const r = await prepare(PrepareConfigSchema.parse({ inputs: [input], out_dir: out, tokenizer: { from: TOK_DIR }, val_fraction: valFraction }));
  const tok = Tokenizer.load(out);
  return { r, train: tok.decode(Array.from(loadSplit(out, 'train'))), val: tok.decode(Array.from(loadSplit(out, 'val'))) };
}

const share = (r: { trainTokens: number; valTokens: number }) => r.valTokens / (r.trainTokens + r.valTokens);

describe('prepare: the split honours val_fraction on any text', () => {
  test('CRLF line endings: paragraphs are found, the text is LF, ~10% is validation', async () => {
    const { r, train, val } = await run(write('crlf.txt', SAMPLE.replace(/\n/g, '\r\n')));
    assert.ok(share(r) > 0.07 && share(r) < 0.13, `val share ${share(r)}`);
    assert.ok(!train.includes('\r') && !val.includes('\r'), 'CRLF became LF');
    // Whole paragraphs: the validation text starts where a paragraph of the original starts.
    assert.ok(SAMPLE.includes(`\n\n${val.slice(0, 40)}`), `val starts a paragraph: ${JSON.stringify(val.slice(0, 40))}`);
    assert.equal(train + val, `${SAMPLE}<|endoftext|>`, 'nothing lost or reordered');
  });

  test('no blank lines at all (one document): a contiguous tail of ~10% of the tokens', async () => {
    const oneParagraph = SAMPLE.replace(/\n\n/g, '\n');
    const { r, train, val } = await run(write('one-doc.txt', oneParagraph));
    assert.ok(r.trainTokens > 0, 'train is not empty');
    assert.ok(Math.abs(share(r) - 0.1) < 0.01, `val share ${share(r)} (train ${r.trainTokens}, val ${r.valTokens})`);
    assert.equal(train + val, `${oneParagraph}<|endoftext|>`, 'train then val is the text, in order');
  });

  test('a JSONL file of one row and a JSONL with a BOM: split by tokens, and the BOM is not text', async () => {
    const rows = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => JSON.stringify({ text: SAMPLE.slice(i * 500, i * 500 + 500) })).join('\n') + '\n';
    const { r, train } = await run(write('bom.jsonl', `\uFEFF${rows}`));
    assert.ok(!train.includes('\uFEFF'));
    assert.ok(train.startsWith(SAMPLE.slice(500, 540)), JSON.stringify(train.slice(0, 40)));
    assert.ok(share(r) > 0.05 && share(r) < 0.2, `val share ${share(r)}`);
    const single = await run(write('single.jsonl', JSON.stringify({ text: SAMPLE.slice(0, 3000) }) + '\n'));
    assert.ok(Math.abs(share(single.r) - 0.1) < 0.02, `val share ${share(single.r)}`);
  });
});

describe('bad inputs: one error naming the file', () => {
  const rejects = async (path: string, reason: string) => {
    await tokReady;
    await assert.rejects(prepare(PrepareConfigSchema.parse({ inputs: [path], out_dir: join(TMP, `bad-${n++}`), tokenizer: { from: TOK_DIR } })), (e: Error) => {
      assert.ok(e instanceof InputError, `${e.name}: ${e.message}`);
      assert.equal(e.message, `${path}: ${reason}`);
      return true;
    });
  };

  test('binary data (NUL bytes, or not UTF-8), empty and whitespace-only files, directories, missing files', async () => {
    const bytes = Buffer.alloc(4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919) % 256;
    await rejects(write('nul.bin', bytes), 'looks like binary data (NUL bytes); prepare reads UTF-8 text or JSONL');
    const noNul = Buffer.from(bytes.map((b) => b | 0x80));
    await rejects(write('latin.bin', noNul), `looks like binary data (${(noNul.toString('utf8').match(/\uFFFD/g) ?? []).length} invalid UTF-8 sequences in the first 4096 bytes); prepare reads UTF-8 text or JSONL`);
    await rejects(write('empty.txt', ''), 'empty input (no text)');
    await rejects(write('blank.txt', '\uFEFF \n\r\n\t'), 'empty input (no text)');
    const dir = join(TMP, 'a-directory');
    mkdirSync(dir);
    await rejects(dir, 'is a directory, not a text or JSONL file');
    await rejects(join(TMP, 'missing.txt'), 'input file not found');
  });

  test('SFT JSONL: a BOM is ignored; a directory is named', () => {
    const withBom = write('alpaca-bom.jsonl', `\uFEFF${readFileSync(ALPACA_30, 'utf8')}`);
    const r = readSftJsonl(withBom);
    assert.equal(r.rows.length, readSftJsonl(ALPACA_30).rows.length);
    const dir = join(TMP, 'sft-dir.jsonl');
    mkdirSync(dir);
    assert.throws(() => readSftJsonl(dir), (e: Error) => e instanceof InputError && e.message === `${dir}: is a directory, not a file (expected the SFT data file)`);
    assert.throws(() => readSftJsonl(join(TMP, 'nope.jsonl')), /nope\.jsonl: SFT data file not found$/);
  });
});
