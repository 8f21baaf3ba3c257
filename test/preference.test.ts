/**
 * The preference reader (src/data/preference.ts): every format → the same pairs, TRL's implicit prompt,
 * HH-RLHF and LLaMA-Factory on real rows, ranked lists → K(K−1)/2 pairs, one-line row errors, exact
 * response positions on a hand-written example, and truncation that keeps the response end.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { fitPair, makePreferenceBatch, disposePreferenceBatch, readPreferenceJsonl, renderPair, rowToPairs, tokenizePairs, parseHhTranscript } from '../src/data/preference.js';
import { IM_END, IM_START } from '../src/tokenizer/index.js';
import { ALPACA_30, tinyTokenizer } from './finetune-fixtures.js';
import { FIXTURES_PREF } from './paths.js';

await initBackend('wasm');
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-pref-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
const file = (name: string, rows: unknown[]) => {
  const p = join(TMP, name);
  writeFileSync(p, rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n');
  return p;
};

describe('formats', () => {
  const want = [{ prompt: [{ role: 'user', content: 'Hi?' }], chosen: 'Hello!', rejected: 'Go away' }];
  test('standard strings', () => assert.deepEqual(rowToPairs({ prompt: 'Hi?', chosen: 'Hello!', rejected: 'Go away' }), want));
  test('conversational with explicit prompt', () =>
    assert.deepEqual(rowToPairs({ prompt: [{ role: 'user', content: 'Hi?' }], chosen: [{ role: 'assistant', content: 'Hello!' }], rejected: [{ role: 'assistant', content: 'Go away' }] }), want));
  test('conversational with the implicit prompt (longest common message prefix)', () => {
    const sys = { role: 'system', content: 'Be kind.' }, u = { role: 'user', content: 'Hi?' };
    assert.deepEqual(rowToPairs({ chosen: [sys, u, { role: 'assistant', content: 'Hello!' }], rejected: [sys, u, { role: 'assistant', content: 'Go away' }] }), [
      { prompt: [sys, u], chosen: 'Hello!', rejected: 'Go away' },
    ]);
  });
  test('HH-RLHF transcripts: turns parsed, the last Assistant turn is the response', () => {
    const row = { chosen: '\n\nHuman: Hi?\n\nAssistant: Hey.\n\nHuman: Help me\n\nAssistant: Sure, how?', rejected: '\n\nHuman: Hi?\n\nAssistant: Hey.\n\nHuman: Help me\n\nAssistant: No.' };
    assert.deepEqual(rowToPairs(row), [{
      prompt: [{ role: 'user', content: 'Hi?' }, { role: 'assistant', content: 'Hey.' }, { role: 'user', content: 'Help me' }],
      chosen: 'Sure, how?', rejected: 'No.',
    }]);
    assert.deepEqual(parseHhTranscript('\n\nHuman: a\n\nb\n\nAssistant: c', 'chosen'), [{ role: 'user', content: 'a\n\nb' }, { role: 'assistant', content: 'c' }]);
  });
  test('LLaMA-Factory pairwise (from/value, optional system)', () =>
    assert.deepEqual(rowToPairs({ system: 'S', conversations: [{ from: 'human', value: 'Hi?' }], chosen: { from: 'gpt', value: 'Hello!' }, rejected: { from: 'gpt', value: 'Go away' } }), [
      { prompt: [{ role: 'system', content: 'S' }, { role: 'user', content: 'Hi?' }], chosen: 'Hello!', rejected: 'Go away' },
    ]));
  test('LLaMA-Factory Alpaca-style pairs (instruction + input)', () =>
    assert.deepEqual(rowToPairs({ instruction: 'Translate', input: 'Hallo', chosen: 'Hello', rejected: 'Bye' }), [
      { prompt: [{ role: 'user', content: 'Translate\n\nHallo' }], chosen: 'Hello', rejected: 'Bye' },
    ]));
  test('ranked list [best … worst] → all K(K−1)/2 pairs, better first', () => {
    const pairs = rowToPairs({ prompt: 'Q', responses: ['A', 'B', 'C'] });
    assert.deepEqual(pairs.map((p) => [p.chosen, p.rejected]), [['A', 'B'], ['A', 'C'], ['B', 'C']]);
    assert.equal(rowToPairs({ prompt: 'Q', responses: ['1', '2', '3', '4', '5'] }).length, 10);
  });
  test('a numeric margin rides along', () => assert.equal(rowToPairs({ prompt: 'Q', chosen: 'a', rejected: 'b', margin: 1.5 })[0]!.margin, 1.5));
});

describe('real files', () => {
  test('HH-RLHF harmless-base: 40 rows → 40 pairs of user/assistant turns', () => {
    const r = readPreferenceJsonl(join(FIXTURES_PREF, 'hh_rlhf_harmless_40.jsonl'));
    assert.equal(r.pairs.length, 40);
    assert.equal(r.pairs[0]!.prompt[0]!.content, 'what are some pranks with a pen i can do?');
    assert.equal(r.pairs[0]!.prompt.length, 5); // Human, Assistant, Human, Assistant, Human
    assert.ok(r.pairs.every((p) => p.prompt.at(-1)!.role === 'user' && p.chosen !== p.rejected));
  });
  test('LLaMA-Factory dpo_en_demo: 20 rows → 20 pairs', () => {
    const r = readPreferenceJsonl(join(FIXTURES_PREF, 'llamafactory_dpo_20.jsonl'));
    assert.equal(r.pairs.length, 20);
    assert.match(r.pairs[0]!.prompt[0]!.content, /^Hi! I'd like to create a new language game/);
    assert.match(r.pairs[0]!.chosen, /^That sounds like a fun and engaging idea!/);
  });
});

describe('bad rows: one line with file, line and field', () => {
  const err = (rows: unknown[], re: RegExp) => assert.throws(() => readPreferenceJsonl(file('bad.jsonl', rows)), (e: Error) => re.test(e.message) && !e.message.includes('\n'));
  const ok = { prompt: 'Q', chosen: 'a', rejected: 'b' };
  test('missing field', () => err([ok, { prompt: 'Q', chosen: 'a' }], /bad\.jsonl: line 2: field 'rejected': missing/));
  test('chosen == rejected', () => err([{ prompt: 'Q', chosen: 'same', rejected: 'same' }], /line 1: field 'rejected': identical to 'chosen'/));
  test('empty response', () => err([ok, ok, { prompt: 'Q', chosen: '  ', rejected: 'b' }], /line 3: field 'chosen': empty response/));
  test('wrong type', () => err([{ prompt: 'Q', chosen: 3, rejected: 'b' }], /line 1: field 'chosen': expected a string or an assistant message, got number/));
  test('not JSON', () => err(['{oops'], /line 1: not valid JSON/));
  test('a non-preference file (Alpaca SFT rows)', () =>
    assert.throws(() => readPreferenceJsonl(ALPACA_30), /alpaca_30\.jsonl: line 1: field 'chosen': missing \(expected a preference row/));
  test('skip_invalid skips and counts', () => {
    const r = readPreferenceJsonl(file('mixed.jsonl', [ok, { prompt: 'Q', chosen: 'x', rejected: 'x' }, '', ok]), { skipInvalid: true });
    assert.equal(r.pairs.length, 2);
    assert.equal(r.skipped, 1);
    assert.deepEqual(r.pairs.map((p) => p.line), [1, 4]);
  });
});

test('rendering: the exact response positions of a hand-written pair', () => {
  const tok = tinyTokenizer();
  const S = tok.tokenToId(IM_START)!, E = tok.tokenToId(IM_END)!;
  const enc = (s: string) => tok.encode(s, { allowSpecial: false });
  const prompt = [S, ...enc('user\n'), ...enc('Hi?'), E, ...enc('\n'), S, ...enc('assistant\n')];
  const yes = [...enc('Yes.'), E], no = [...enc('No'), E];
  const r = renderPair(tok, { prompt: [{ role: 'user', content: 'Hi?' }], chosen: 'Yes.', rejected: 'No' });
  assert.deepEqual(r, { prompt, chosen: yes, rejected: no });
  const { examples } = tokenizePairs(tok, [{ line: 1, prompt: [{ role: 'user', content: 'Hi?' }], chosen: 'Yes.', rejected: 'No' }], 64);
  const b = makePreferenceBatch(examples, tok.padId);
  const T = prompt.length + Math.max(yes.length, no.length);
  assert.deepEqual(b.inputs.shape, [2, T]);
  const mask = Array.from(b.mask.dataSync()), last = Array.from(b.last.dataSync()), targets = Array.from(b.targets.dataSync());
  // Row 0 (chosen): positions prompt.length − 1 … T − 2 predict the response tokens; the reward reads T − 1.
  const row = (len: number, resp: number) => Array.from({ length: T }, (_, i) => (i >= len - resp - 1 && i < len - 1 ? 1 : 0));
  assert.deepEqual(mask.slice(0, T), row(prompt.length + yes.length, yes.length));
  assert.deepEqual(mask.slice(T), row(prompt.length + no.length, no.length));
  assert.equal(last.indexOf(1), prompt.length + yes.length - 1);
  assert.equal(last.lastIndexOf(1), T + prompt.length + no.length - 1);
  assert.deepEqual(targets.slice(prompt.length - 1, prompt.length - 1 + yes.length), yes);
  disposePreferenceBatch(b);
});

test('truncation drops prompt tokens from the left first, then response tokens; the response end stays', () => {
  const P = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  const a = fitPair(P, [20, 21, 22], [30, 31], 6);
  assert.deepEqual([a.chosen, a.rejected], [{ ids: [8, 9, 10, 20, 21, 22], start: 3 }, { ids: [8, 9, 10, 30, 31], start: 3 }]);
  assert.equal(a.truncated, true);
  assert.equal(a.responseTruncated, false);
  const b = fitPair(P, [20, 21, 22], [30, 31], 3); // one prompt token is kept so the response's first token is predicted
  assert.deepEqual([b.chosen, b.rejected], [{ ids: [10, 21, 22], start: 1 }, { ids: [10, 30, 31], start: 1 }]);
  assert.equal(b.responseTruncated, true);
  assert.equal(fitPair(P, [20], [30], 64).truncated, false);
});
