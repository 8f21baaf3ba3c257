/**
 * SFT data and training (src/data/sft.ts, src/train/sft.ts): ChatML rendering and the loss mask on a
 * hand-written example, row errors with line numbers, skip_invalid, truncation and packing counts,
 * padded batches, the masked loss, resume on the same loss curve, and no tensor leak across steps.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { loadCheckpoint, disposeParams } from '../src/checkpoint/model.js';
import { readManifest } from '../src/checkpoint/manifest.js';
import { SftConfigSchema } from '../src/config/stages.js';
import { validate } from '../src/config/load.js';
import {
  assertChatTokenizer,
  disposeSftBatch,
  makeSftBatch,
  packExamples,
  readSftJsonl,
  rowToMessages,
  sftBatchSource,
  tokenizeSft,
} from '../src/data/sft.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { forward } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { sft, sftLoss } from '../src/train/sft.js';
import { setupLogger } from '../src/util/log.js';
import { Rng } from '../src/util/rng.js';
import { ALPACA_30, sftConfig, tinyModel, tinyTokenizer, writeTinyBase } from './finetune-fixtures.js';
import { TOK512_PATH } from './paths.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-sft-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

function writeJsonl(name: string, lines: string[]): string {
  const p = join(TMP, name);
  writeFileSync(p, lines.join('\n') + '\n');
  return p;
}

describe('rendering and the loss mask', () => {
  test('Alpaca row → ChatML ids with the mask on exactly the response tokens and <|im_end|>', () => {
    const tok = tinyTokenizer();
    const msgs = rowToMessages({ instruction: 'Say hi', input: 'Bob', output: 'Hi Bob' });
    assert.deepEqual(msgs, [{ role: 'user', content: 'Say hi\n\nBob' }, { role: 'assistant', content: 'Hi Bob' }]);
    const r = tok.renderChat(msgs);
    assert.equal(r.text, '<|im_start|>user\nSay hi\n\nBob<|im_end|>\n<|im_start|>assistant\nHi Bob<|im_end|>\n');
    // Hand-built from the pieces: header, content, <|im_end|>, "\n" per turn.
    const S = tok.tokenToId('<|im_start|>')!, E = tok.tokenToId('<|im_end|>')!;
    const enc = (s: string) => tok.encode(s, { allowSpecial: false });
    const prompt = [S, ...enc('user\n'), ...enc('Say hi\n\nBob'), E, ...enc('\n'), S, ...enc('assistant\n')];
    const answer = [...enc('Hi Bob'), E];
    assert.deepEqual(r.ids, [...prompt, ...answer, ...enc('\n')]);
    assert.equal(r.ids.length, 30);
    const ones = r.trainMask.flatMap((m, i) => (m ? [i] : []));
    assert.deepEqual(ones, [22, 23, 24, 25, 26, 27, 28]); // "H" "i" " " "B" "o" "b" <|im_end|>
    assert.equal(prompt.length, 22);
    assert.equal(tok.decode(r.ids.filter((_, i) => r.trainMask[i])), 'Hi Bob<|im_end|>');

    // In a batch the mask moves to the position that PREDICTS the token: mask[i] = trainMask[i + 1].
    const short = { ids: [5, 6, 7], trainMask: [0, 1, 1], line: 2 };
    const b = makeSftBatch([{ ids: r.ids, trainMask: r.trainMask, line: 1 }, short], tok.padId);
    assert.deepEqual(b.inputs.shape, [2, 29]);
    const mask = Array.from(b.mask.dataSync());
    assert.deepEqual(mask.slice(0, 29).flatMap((m, i) => (m ? [i] : [])), [21, 22, 23, 24, 25, 26, 27]);
    assert.deepEqual(mask.slice(29).flatMap((m, i) => (m ? [i] : [])), [0, 1]); // then padding: mask 0
    assert.equal(b.trainTokens, 9);
    const targets = Array.from(b.targets.dataSync());
    assert.deepEqual(targets.slice(21, 28), r.ids.slice(22, 29));
    assert.deepEqual(Array.from(b.inputs.dataSync()).slice(29, 32), [5, 6, tok.padId]);
    disposeSftBatch(b);
  });

  test('Alpaca with an empty input has no blank lines; chat rows train only assistant turns', () => {
    assert.deepEqual(rowToMessages({ instruction: 'Go', input: '', output: 'Ok' })[0], { role: 'user', content: 'Go' });
    const tok = tinyTokenizer();
    const r = tok.renderChat(rowToMessages({ messages: [{ role: 'system', content: 'Be brief' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Yo' }, { role: 'user', content: 'And?' }, { role: 'assistant', content: 'Done' }] }));
    assert.equal(tok.decode(r.ids.filter((_, i) => r.trainMask[i])), 'Yo<|im_end|>Done<|im_end|>');
  });

  test('a tokenizer without ChatML tokens (llama2.c sentencepiece) gets a clear error', () => {
    const sp = Tokenizer.fromLlama2c(readFileSync(TOK512_PATH), 512);
    assert.throws(() => assertChatTokenizer(sp, 'ckpt/stories'), /ckpt\/stories: the tokenizer \(sentencepiece\) has no ChatML tokens <\|im_start\|>\/<\|im_end\|>/);
  });
});

describe('reading JSONL', () => {
  const bad = () =>
    writeJsonl('bad.jsonl', [
      '{"instruction": "a", "input": "", "output": "b"}',
      '{"instruction": "a", "input": ""}',
      '{"instruction": "a", "input": "", "output": 3}',
      '',
      '{"instruction": "a", "input": "", "output": "  "}',
      '{not json',
      '{"messages": [{"role": "robot", "content": "x"}]}',
      '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
    ]);

  test('the first bad row is an error naming the file, line and field', () => {
    const p = bad();
    assert.throws(() => readSftJsonl(p), (e: Error) => e.message.startsWith(`${p}: line 2: field 'output': missing`));
  });

  test('each kind of bad row has its own message', () => {
    const cases: [unknown, RegExp][] = [
      [{ instruction: 'a', output: 3 }, /: field 'output': expected a string, got number$/],
      [{ instruction: 'a', output: '' }, /: field 'output': must be a non-empty string$/],
      [{ instruction: ['a'], output: 'b' }, /: field 'instruction': expected a string, got a list$/],
      [{ instruction: 'a', input: 5, output: 'b' }, /: field 'input': expected a string, got number$/],
      [{ messages: 'hi' }, /: field 'messages': expected a list, got string$/],
      [{ messages: [{ role: 'robot', content: 'x' }] }, /: field 'messages\[0\].role': expected one of system, user, assistant/],
      [{ messages: [{ role: 'user', content: 'x' }] }, /: field 'messages': no assistant message/],
      [{ messages: [{ role: 'assistant' }] }, /: field 'messages\[0\].content': missing$/],
      [[1, 2], /: expected a JSON object, got a list$/],
    ];
    for (const [row, re] of cases) assert.throws(() => rowToMessages(row), re, JSON.stringify(row));
  });

  test('skip_invalid skips and counts bad rows', () => {
    const p = bad();
    const r = readSftJsonl(p, { skipInvalid: true });
    assert.equal(r.rows.length, 2);
    assert.deepEqual(r.rows.map((x) => x.line), [1, 8]);
    assert.equal(r.skipped, 5);
    assert.match(r.skippedReasons[3]!, /line 6: not valid JSON/);
    assert.match(r.skippedReasons[4]!, /line 7: field 'messages\[0\].role'/);
  });

  test('the shipped fixture reads cleanly (30 Alpaca rows)', () => {
    const r = readSftJsonl(ALPACA_30);
    assert.equal(r.rows.length, 30);
    assert.equal(r.skipped, 0);
  });
});

describe('truncation, packing and batches', () => {
  test('rows longer than n_ctx + 1 are cut and counted; rows with no response left are dropped', () => {
    const tok = tinyTokenizer();
    const rows = [
      { line: 1, messages: rowToMessages({ instruction: 'Hi', output: 'Yo' }) },
      { line: 2, messages: rowToMessages({ instruction: 'x'.repeat(200), output: 'Yo' }) }, // prompt alone too long
      { line: 3, messages: rowToMessages({ instruction: 'Hi', output: 'a long answer that will not fit in the window at all' }) },
    ];
    const { examples, stats } = tokenizeSft(tok, rows, 24);
    assert.equal(stats.truncated, 2);
    assert.equal(stats.droppedNoTarget, 1);
    assert.deepEqual(examples.map((e) => e.line), [1, 3]);
    assert.equal(examples[1]!.ids.length, 24);
    assert.ok(examples.every((e) => e.ids.length <= 24 && e.ids.length === e.trainMask.length));
  });

  test('packing concatenates whole examples, keeps masks, never exceeds the row length', () => {
    const ex = [
      { ids: [1, 2, 3], trainMask: [0, 1, 1], line: 1 },
      { ids: [4, 5], trainMask: [0, 1], line: 2 },
      { ids: [6, 7, 8, 9], trainMask: [0, 0, 1, 1], line: 3 },
      { ids: [10], trainMask: [1], line: 4 },
    ];
    const packed = packExamples(ex, 5);
    assert.deepEqual(packed.map((p) => p.ids), [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]);
    assert.deepEqual(packed.map((p) => p.trainMask), [[0, 1, 1, 0, 1], [0, 0, 1, 1, 1]]);
    assert.deepEqual(ex[0]!.ids, [1, 2, 3]); // inputs untouched
  });

  test('the batch source walks shuffled epochs and a resumed source continues the same order', () => {
    const ex = Array.from({ length: 5 }, (_, i) => ({ ids: [i, i, i], trainMask: [0, 1, 1], line: i + 1 }));
    const first = (b: ReturnType<ReturnType<typeof sftBatchSource>['next']>) => {
      const v = Array.from(b.inputs.dataSync());
      disposeSftBatch(b);
      return [v[0], v[2]];
    };
    const rng = new Rng(1);
    const a = sftBatchSource(ex, 2, 0, 9);
    const seq = Array.from({ length: 5 }, () => first(a.next(rng)));
    assert.deepEqual(new Set(seq.slice(0, 2).flat().concat(seq[2]![0]!)), new Set([0, 1, 2, 3, 4])); // epoch 1 = a permutation
    const b = sftBatchSource(ex, 2, 0, 9, 3);
    assert.deepEqual([first(b.next(rng)), first(b.next(rng))], seq.slice(3));
  });

  test('masked loss: an unmasked target does not count, and the value is the NLL of the masked positions', () => {
    const config = tinyModel();
    const params = initParams(config, 1);
    const ex = { ids: [1, 2, 3, 4, 5], trainMask: [0, 0, 0, 0, 1], line: 1 };
    const b = makeSftBatch([ex], 0);
    const changed = { ...b, targets: tf.tensor1d([7, 7, 7, 5], 'int32') }; // only the last target is trained
    const l = sftLoss(params, config, b), lc = sftLoss(params, config, changed);
    assert.equal(l.dataSync()[0], lc.dataSync()[0]);
    const logp = tf.tidy(() => tf.logSoftmax(tf.reshape(forward(params, config, b.inputs).logits, [-1, config.vocab_size])));
    const nll = -(logp.arraySync() as number[][])[3]![5]!;
    assert.ok(Math.abs(l.dataSync()[0]! - nll) < 1e-5, `${l.dataSync()[0]} vs ${nll}`);
    [l, lc, logp, changed.targets].forEach((t) => t.dispose());
    disposeSftBatch(b);
    disposeParams(params);
  });
});

describe('sft training', () => {
  const base = join(TMP, 'base');
  const ready = writeTinyBase(base);

  test('config schema: strict, with defaults', () => {
    const cfg = sftConfig(base, join(TMP, 'x'));
    assert.equal(cfg.data.format, 'auto');
    assert.equal(cfg.data.skip_invalid, false);
    assert.equal(cfg.optim.schedule, 'constant');
    assert.throws(() => validate(SftConfigSchema, { base: 'b', out_dir: 'o', data: { path: 'p', pakcing: true }, train: { max_steps: 1, batch_size: 1 } }, 'sft.yaml'), /sft\.yaml: data\.pakcing: unknown key/);
  });

  test('trains, saves a full checkpoint with parent = base, and resume continues the same loss curve', async () => {
    await ready;
    const straightDir = join(TMP, 'straight'), splitDir = join(TMP, 'split');
    const counts: number[] = [];
    const straight = await sft(sftConfig(base, straightDir, { train: { max_steps: 6 } }), { quiet: true, onStep: () => counts.push(tf.memory().numTensors) });
    assert.equal(straight.step, 6);
    assert.equal(straight.losses.length, 6);
    assert.ok(straight.losses.every(Number.isFinite));
    assert.ok(straight.losses[5]! < straight.losses[0]!, `loss falls: ${straight.losses.map((l) => l.toFixed(3))}`);
    // No tensor leak: the count is flat from the second step on.
    assert.equal(new Set(counts.slice(1)).size, 1, `tensor counts per step: ${counts}`);

    const half = await sft(sftConfig(base, splitDir, { train: { max_steps: 3 } }), { quiet: true });
    const rest = await sft(sftConfig(base, splitDir, { train: { max_steps: 6 } }), { quiet: true, resume: true });
    assert.equal(rest.step, 6);
    const resumed = [...half.losses, ...rest.losses];
    for (let i = 0; i < 6; i++) assert.ok(Math.abs(resumed[i]! - straight.losses[i]!) < 1e-5, `step ${i + 1}: ${resumed[i]} vs ${straight.losses[i]}`);

    const m = readManifest(straightDir);
    assert.equal(m.stage, 'sft');
    assert.equal(m.parent?.path, base);
    assert.ok(existsSync(join(straightDir, 'model.safetensors')) && existsSync(join(straightDir, 'trainer_state.json')));
    const metrics = readFileSync(join(straightDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss?: number });
    assert.deepEqual(metrics.filter((x) => x.loss !== undefined).map((x) => x.step), [1, 2, 3, 4, 5, 6]);
    const ck = loadCheckpoint(straightDir);
    assert.equal(ck.tokenizer.tokenToId('<|im_start|>'), tinyTokenizer().tokenToId('<|im_start|>'));
    disposeParams(ck.params);
  });

  test('packing, val split and truncation counts come back in the result', async () => {
    await ready;
    const r = await sft(sftConfig(base, join(TMP, 'packed'), { train: { max_steps: 1, eval_batches: 2 }, data: { packing: true, val_fraction: 0.2 } }), { quiet: true });
    assert.equal(r.data.rows, 30);
    assert.ok(r.data.stats.truncated > 0, 'n_ctx 32 truncates some fixture rows');
    assert.equal(r.data.stats.examples + r.data.stats.droppedNoTarget, 30);
    assert.ok(r.data.trainRows < r.data.stats.examples, 'packing made fewer rows');
    assert.ok(Number.isFinite(r.metrics.val_loss!), 'val_loss reported');
  });

  test('a bad row stops sft with the line number; skip_invalid trains on the rest', async () => {
    await ready;
    const lines = readFileSync(ALPACA_30, 'utf8').trim().split('\n');
    lines[4] = '{"instruction": "x", "input": "", "output": ""}';
    const p = writeJsonl('one-bad.jsonl', lines);
    await assert.rejects(sft(sftConfig(base, join(TMP, 'bad'), { data: { path: p } }), { quiet: true }), new RegExp(`^Error: ${p.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: line 5: field 'output': must be a non-empty string`));
    const r = await sft(sftConfig(base, join(TMP, 'skip'), { data: { path: p, skip_invalid: true }, train: { max_steps: 1 } }), { quiet: true });
    assert.equal(r.data.skipped, 1);
    assert.equal(r.data.rows, 29);
  });
});
