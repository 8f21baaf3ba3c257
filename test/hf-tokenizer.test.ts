/**
 * The tokenizer files we write load in Hugging Face's tokenizers (the JS port, @huggingface/tokenizers, as
 * a dev dependency) and encode exactly like our tokenizer: on the shipped corpora, slices of the eval sets,
 * unicode edge cases and seeded random strings, with and without BOS. Sentencepiece-style vocabularies are
 * written in the '▁' convention with a BOS post-processor; a chat template only where its tokens exist.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { SHAKESPEARE_PATH, TOK512_PATH } from './paths.js';
import { CHATML_TEMPLATE, Tokenizer } from '../src/tokenizer/index.js';

const SHAKESPEARE = readFileSync(SHAKESPEARE_PATH, 'utf8');
const ALPACA = readFileSync(new URL('../data/alpaca_en_demo.jsonl', import.meta.url), 'utf8')
  .split('\n')
  .filter(Boolean)
  .flatMap((l) => Object.values(JSON.parse(l) as Record<string, string>).filter((v) => typeof v === 'string' && v !== ''));
const EVAL = readFileSync(new URL('./fixtures/eval-texts.jsonl', import.meta.url), 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => (JSON.parse(l) as { text: string }).text);

const EDGE: string[] = [
  '', ' ', '  ', 'a', '\n', '\n\n\n', '\t \r\n  \u000b\f', '   leading and trailing   ', ' x', 'x ',
  "I'm you'll they're we've she'd IT'S don'T", 'Hello, world! 123 4567.89 -0.5e10 ٣٤٥ ¾',
  '👩‍👩‍👧‍👦🎉🇺🇳 emoji', '日本語のテキスト、中文字符，한국어', 'مرحبا بالعالم עברית', 'e\u0301 combining, zero\u200bwidth, nbsp\u00a0here',
  '\u0000\u0001\u0002\u007f control chars \u0085\u2028\u2029', '\uFEFFstarts with a BOM', 'x'.repeat(2000), ' '.repeat(300) + 'spaces',
  'def f(x):\n    return {"a": [1, 2, 3]}  # ok\n\t\tpass\n', 'half <|im_start and <|endoftext| and |>', '▁ already ▁▁ has ▁ markers',
  '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 ﬁ ﬂ Å Ω', 'ǅ ǈ ǋ İstanbul straße ΣΊΣΥΦΟΣ',
];

function randomStrings(count: number, seed: number): string[] {
  let s = seed >>> 0;
  const rnd = (n: number) => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s % n);
  const ranges: Array<[number, number]> = [[0x20, 0x7e], [0x20, 0x7e], [0x09, 0x0d], [0xa0, 0xff], [0x4e00, 0x4fff], [0x1f300, 0x1f64f], [0x0400, 0x04ff], [0x2580, 0x2590]];
  return Array.from({ length: count }, () => {
    let str = '';
    for (let j = rnd(50); j > 0; j--) {
      const [lo, hi] = ranges[rnd(ranges.length)]!;
      str += String.fromCodePoint(lo + rnd(hi - lo + 1));
    }
    return str;
  });
}

const TEXTS = [
  ...SHAKESPEARE.split('\n\n'), // whole corpus, paragraph by paragraph
  ...ALPACA,
  ...EVAL,
  ...EDGE,
  ...randomStrings(400, 7),
];
// Also the full eval sets where ../shared/data sits beside the repo (CI and the dev machine).
const SHARED_EVAL = new URL('../../shared/data/eval/', import.meta.url);
for (const f of ['gsm8k/test.jsonl', 'arc/arc_easy.jsonl', 'arc/arc_challenge.jsonl']) {
  const u = new URL(f, SHARED_EVAL);
  if (existsSync(u)) for (const l of readFileSync(u, 'utf8').split('\n').filter(Boolean)) TEXTS.push(...Object.values(JSON.parse(l) as Record<string, unknown>).flat().filter((v): v is string => typeof v === 'string'));
}

/** Ours vs HF on every text; returns how many were compared. */
function compare(ours: Tokenizer, hf: HfTokenizer, texts: readonly string[], bos: boolean): number {
  let n = 0;
  for (const t of texts) {
    const want = ours.encode(t, { addBos: bos });
    const got = hf.encode(t, { add_special_tokens: bos }).ids;
    assert.deepEqual(got, want, JSON.stringify(t.slice(0, 120)));
    n++;
  }
  return n;
}

function loadHf(tok: Tokenizer): HfTokenizer {
  // Through JSON text, as a file on disk would be read.
  return new HfTokenizer(JSON.parse(JSON.stringify(tok.toJSON())), JSON.parse(JSON.stringify(tok.toConfigJSON())));
}

describe('byte-level BPE (trained by llmctl prepare)', () => {
  const tok = Tokenizer.train([SHAKESPEARE.slice(0, 300_000)], { vocabSize: 1024 });
  const hf = loadHf(tok);

  test(`same ids as @huggingface/tokenizers on ${TEXTS.length} texts, special tokens included`, () => {
    assert.ok(compare(tok, hf, TEXTS, false) > 8000);
    compare(tok, hf, EDGE, true); // no BOS in this vocabulary: the same ids
    const chat = '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n';
    assert.deepEqual(hf.encode(chat).ids, tok.encode(chat));
    assert.equal(hf.encode(chat).ids.filter((id: number) => id === tok.tokenToId('<|im_start|>')).length, 2);
  });

  test('decodes the same text', () => {
    for (const t of [...EDGE, ...ALPACA.slice(0, 50)].filter(Boolean)) assert.equal(hf.decode(tok.encode(t)), tok.decode(tok.encode(t)));
  });

  test('config: no BOS, ChatML template (its tokens are in the vocabulary)', () => {
    const cfg = tok.toConfigJSON() as Record<string, unknown>;
    assert.equal(cfg.add_bos_token, false);
    assert.equal(cfg.chat_template, CHATML_TEMPLATE);
    const plain = Tokenizer.train(['abc abc'], { vocabSize: 260, specialTokens: ['<|endoftext|>'] });
    assert.ok(!('chat_template' in JSON.parse(JSON.stringify(plain.toConfigJSON()))), 'no ChatML tokens, no chat template');
  });
});

describe('sentencepiece-style BPE (llama2.c tok512, as imported)', () => {
  const tok = Tokenizer.fromLlama2c(readFileSync(TOK512_PATH), 512);
  const hf = loadHf(tok);
  const json = tok.toJSON() as Record<string, any>;

  test("'▁' convention, BOS post-processor, no chat template", () => {
    assert.equal(json.model.vocab['\u2581t'], json.model.vocab['\u2581t']);
    assert.ok(!Object.keys(json.model.vocab).some((k) => k.includes(' ')), 'no piece spells a space as " "');
    assert.equal(json.model.vocab['\u2581'], 410);
    assert.equal(json.model.merges[0], '\u2581 t');
    assert.equal(json.post_processor.type, 'TemplateProcessing');
    assert.deepEqual(json.post_processor.single[0], { SpecialToken: { id: '<s>', type_id: 0 } });
    const cfg = JSON.parse(JSON.stringify(tok.toConfigJSON())) as Record<string, unknown>;
    assert.equal(cfg.add_bos_token, true);
    assert.ok(!('chat_template' in cfg), 'no ChatML tokens in a llama2.c vocabulary');
    // llama2.c's own ids for its prompt, BOS first, from HF's encode as users call it.
    assert.deepEqual(hf.encode('Once upon a time').ids, [1, 403, 407, 261, 378]);
  });

  test(`same ids with and without BOS on the texts (all but those holding a literal '▁')`, () => {
    const texts = TEXTS.filter((t) => !t.includes('\u2581'));
    assert.ok(texts.length > 11000, String(texts.length));
    compare(tok, hf, texts, true);
    compare(tok, hf, texts, false);
    // The one known difference: in the '▁' convention a literal '▁' in the input reads as a space (as in
    // every HF Llama file); llama2.c's run.c, and we, encode it as its UTF-8 bytes.
    assert.deepEqual(hf.encode('a\u2581b', { add_special_tokens: false }).ids, tok.encode('a b'));
    assert.deepEqual(tok.encode('a\u2581b').slice(1, 4), [0xe2 + 3, 0x96 + 3, 0x81 + 3]);
  });

  test('decodes the same text', () => {
    // (Not the BOM text: the JS port's TextDecoder drops a leading U+FEFF; we keep it, as Python's tokenizers does.)
    for (const t of [...EDGE, ...ALPACA.slice(0, 50)].filter((x) => !x.includes('\u2581') && !x.startsWith('\uFEFF'))) assert.equal(hf.decode(tok.encode(t, { addBos: true }), { skip_special_tokens: true }), tok.decode(tok.encode(t, { addBos: true })), JSON.stringify(t));
  });

  test('our reader takes the file back with identical ids (and a Metaspace-style file too)', () => {
    const back = Tokenizer.fromJSON(JSON.parse(JSON.stringify(json)), JSON.parse(JSON.stringify(tok.toConfigJSON())));
    assert.equal(back.addBos, true);
    assert.equal(back.chatTemplate, '');
    for (const t of [...EDGE, ...SHAKESPEARE.split('\n').slice(0, 500)]) assert.deepEqual(back.encode(t, { addBos: true }), tok.encode(t, { addBos: true }));
    // Newer HF Llama files: Metaspace pre-tokenizer with prepend_scheme "first" (no prefix after a special token).
    const meta = { ...JSON.parse(JSON.stringify(json)), normalizer: null, pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false } };
    const m = Tokenizer.fromJSON(meta, tok.toConfigJSON());
    const hfm = new HfTokenizer(meta, tok.toConfigJSON() as Record<string, unknown>);
    for (const t of ['Once upon a time', '</s>Once upon', ' a b </s> c', '  a', ...EDGE.filter((x) => !x.includes('\u2581'))]) assert.deepEqual(hfm.encode(t).ids, m.encode(t, { addBos: true }), JSON.stringify(t));
    assert.deepEqual(m.toJSON(), meta);
  });
});

describe('byte-level files of other families: regex Split pre-tokenizers, Digits, NFC, ignore_merges', () => {
  const base = Tokenizer.train([SHAKESPEARE.slice(0, 300_000)], { vocabSize: 1024 });
  const json = base.toJSON() as Record<string, any>;
  const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const byteLevel = (use_regex: boolean) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex });
  const bos = { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [base.eosId], tokens: ['<|endoftext|>'] } } };
  const variants: Array<[string, Record<string, any>, boolean]> = [
    ['Llama-3 (Split regex with (?i:…), ignore_merges, BOS post-processor)', { ...json, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: LLAMA3_SPLIT }, behavior: 'Isolated', invert: false }, byteLevel(false)] }, post_processor: { type: 'Sequence', processors: [{ type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true }, bos] }, model: { ...json.model, ignore_merges: true } }, true],
    ['Qwen2 (NFC, Split regex of single digits)', { ...json, normalizer: { type: 'NFC' }, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: QWEN2_SPLIT }, behavior: 'Isolated', invert: false }, byteLevel(false)] } }, false],
    ['Digits + ByteLevel (individual digits)', { ...json, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)] } }, false],
  ];
  const sample = [...TEXTS.filter((_, i) => i % 4 === 0), ...EDGE, 'Ünïcödé e\u0301 vs é 12345678 x1y22z333 I\'M SHE\'LL'];
  for (const [label, file, withBos] of variants) {
    test(label, () => {
      const cfg = withBos ? { ...(base.toConfigJSON() as object), bos_token: '<|endoftext|>', add_bos_token: undefined } : base.toConfigJSON();
      const ours = Tokenizer.fromJSON(JSON.parse(JSON.stringify(file)), JSON.parse(JSON.stringify(cfg)));
      assert.equal(ours.addBos, withBos);
      const hf = new HfTokenizer(JSON.parse(JSON.stringify(file)), JSON.parse(JSON.stringify(cfg)));
      compare(ours, hf, sample, false);
      if (withBos) compare(ours, hf, sample.slice(0, 200), true);
      assert.deepEqual(JSON.parse(JSON.stringify(ours.toJSON())).pre_tokenizer, file.pre_tokenizer, 'written back as read');
    });
  }
  test('unsupported pre-tokenizers and normalizers are named', () => {
    assert.throws(() => Tokenizer.fromJSON({ ...json, pre_tokenizer: { type: 'Whitespace' } }), /pre_tokenizer .*Whitespace|ByteLevel/);
    assert.throws(() => Tokenizer.fromJSON({ ...json, normalizer: { type: 'Lowercase' } }), /normalizer Lowercase is not supported/);
  });
});
