/**
 * Eval tasks without a model: readers of the native formats, the exact prompt strings (few-shot included)
 * as lm-evaluation-harness builds them, and the metrics against hand-computed values.
 * Expected prompts were written out from the fixture files by a separate Python rendering of the harness's
 * templates (MMLU, HellaSwag's utils.preprocess), not by the code under test.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { NgramIndex, normalizeWords } from '../src/eval/contamination.js';
import { exactMatch, gsm8kFlexible, gsm8kNormalize, gsm8kStrict, mc2, meanStderr, multipleChoice, passAtK, pyLen } from '../src/eval/metrics.js';
import { parseCsv } from '../src/eval/read.js';
import { type GenTask, type McTask, TRUTHFULQA_QA_PROMPT, buildContext, hellaswagPreprocess, loadTask, pyCapitalize } from '../src/eval/tasks.js';

const FIX = new URL('./fixtures/eval/', import.meta.url).pathname;
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-eval-tasks-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

describe('prompts as the harness builds them', () => {
  test('MMLU anatomy item 2, 5-shot from dev: description, five "Answer: X" examples, the question', () => {
    const t = loadTask('mmlu', FIX + 'mmlu') as McTask;
    const doc = t.docs.filter((d) => d.group === 'anatomy')[1]!;
    const expected = "The following are multiple choice questions (with answers) about anatomy.\n\nWhat is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\nB. The first and second pharyngeal arches\nC. The second pharyngeal arch\nD. The second and third pharyngeal arches\nAnswer: D\n\nWhich of these branches of the trigeminal nerve contain somatic motor processes?\nA. The supraorbital nerve\nB. The infraorbital nerve\nC. The mental nerve\nD. None of the above\nAnswer: D\n\nThe pleura\nA. have no sensory innervation.\nB. are separated by a 2 mm space.\nC. extend into the neck.\nD. are composed of respiratory epithelium.\nAnswer: C\n\nIn Angle's Class II Div 2 occlusion there is\nA. excess overbite of the upper lateral incisors.\nB. negative overjet of the upper central incisors.\nC. excess overjet of the upper lateral incisors.\nD. excess overjet of the upper central incisors.\nAnswer: C\n\nWhich of the following is the body cavity that contains the pituitary gland?\nA. Abdominal\nB. Cranial\nC. Pleural\nD. Spinal\nAnswer: B\n\nA \"dished face\" profile is often associated with\nA. a protruding mandible due to reactivation of the condylar cartilage by acromegaly.\nB. a recessive maxilla due to failure of elongation of the cranial base.\nC. an enlarged frontal bone due to hydrocephaly.\nD. defective development of the maxillary air sinus.\nAnswer:";
    assert.equal(buildContext(t, doc, 5), expected);
    assert.deepEqual(doc.choices, ['A', 'B', 'C', 'D']);
    assert.equal(doc.gold, 1);
    assert.equal(t.defaultFewshot, 5);
    // high_school_mathematics gets its own description ("_" → " ") and its own dev examples
    const math = t.docs.find((d) => d.group === 'high_school_mathematics')!;
    assert.ok(buildContext(t, math, 5).startsWith('The following are multiple choice questions (with answers) about high school mathematics.\n\n'));
  });

  test('HellaSwag from the 6-line file: query and endings, zero-shot', () => {
    const t = loadTask('hellaswag', FIX + 'hellaswag/hellaswag_val_6line.txt') as McTask;
    assert.equal(t.docs.length, 3);
    assert.equal(buildContext(t, t.docs[0]!, 0), 'Roof shingle removal: A man is sitting on a roof. he');
    assert.deepEqual(t.docs[0]!.choices, ['is using wrap to wrap a pair of skis.', 'is ripping level tiles off.', "is holding a rubik's cube.", 'starts pulling up roofing on a roof.']);
    assert.equal(t.docs[0]!.gold, 3);
    assert.deepEqual(t.metrics, ['acc', 'acc_norm']);
  });

  test('HellaSwag native JSONL: ctx_b capitalised as Python does, brackets and [title] handled', () => {
    const path = join(TMP, 'hs.jsonl');
    const row = { activity_label: 'Personal Care and Style', ctx_a: '[header] How to dye your hair blue [title] Buy the dye.', ctx_b: '[step] YOU can find it AT a store.', endings: ['[substeps] Ask a friend to help. [title] Rinse.', ' Wash it out.  Then dry it. '], label: '1' };
    writeFileSync(path, JSON.stringify(row) + '\n');
    const t = loadTask('hellaswag', path) as McTask;
    assert.equal(t.docs[0]!.text, 'Personal Care and Style: How to dye your hair blue. Buy the dye. you can find it at a store.');
    assert.deepEqual(t.docs[0]!.choices, [' Ask a friend to help.. Rinse.', 'Wash it out. Then dry it.']);
    assert.equal(pyCapitalize('hE said'), 'He said');
    assert.equal(hellaswagPreprocess(' a [title] b '), 'a. b');
  });

  test('ARC: "Question: …\\nAnswer:" from llm-foundry, AI2 and Hugging Face layouts alike', () => {
    const t = loadTask('arc_easy', FIX + 'arc/arc_easy.jsonl') as McTask;
    assert.equal(buildContext(t, t.docs[0]!, 0), 'Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:');
    assert.equal(t.docs[0]!.choices[0], 'Sunlight is the source of energy for nearly all ecosystems.');
    const ai2 = join(TMP, 'ai2.jsonl'), hf = join(TMP, 'hf.jsonl');
    writeFileSync(ai2, JSON.stringify({ id: 'x', question: { stem: 'Why?', choices: [{ text: 'a', label: 'A' }, { text: 'b', label: 'B' }, { text: 'c', label: 'C' }] }, answerKey: 'B' }) + '\n');
    writeFileSync(hf, JSON.stringify({ id: 'x', question: 'Why?', choices: { text: ['a', 'b', 'c'], label: ['1', '2', '3'] }, answerKey: '3' }) + '\n');
    const a = loadTask('arc_challenge', ai2) as McTask, h = loadTask('arc_challenge', hf) as McTask;
    assert.equal(a.docs[0]!.text, 'Question: Why?\nAnswer:');
    assert.equal(a.docs[0]!.gold, 1);
    assert.equal(h.docs[0]!.gold, 2);
  });

  test('TruthfulQA MC1/MC2: the 6-shot QA prompt, then "Q: …\\nA:"; MC2 labels true answers first', () => {
    const m1 = loadTask('truthfulqa_mc1', FIX + 'truthfulqa/mc_task.json') as McTask;
    const m2 = loadTask('truthfulqa_mc2', FIX + 'truthfulqa/mc_task.json') as McTask;
    const expected = 'Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\nQ: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\nQ: Which party did he belong to?\nA: He belonged to the Republican Party.\n\nQ: What is the square root of banana?\nA: I have no comment.\n\nQ: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\nQ: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: What happens to you if you eat watermelon seeds?\nA:';
    assert.equal(buildContext(m1, m1.docs[0]!, 0), expected);
    assert.equal(TRUTHFULQA_QA_PROMPT.split('\n\n').length, 6);
    assert.equal(m1.docs[0]!.choices[0], 'The watermelon seeds pass through your digestive system');
    assert.equal(m1.docs[0]!.choices.length, 8);
    assert.deepEqual(m2.docs[0]!.labels, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
  });

  test('GSM8K: five "Question: …\\nAnswer: <solution>" examples (other items of the file), then the question', () => {
    const t = loadTask('gsm8k', FIX + 'gsm8k/test.jsonl') as GenTask;
    const rows = readFileSync(FIX + 'gsm8k/test.jsonl', 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { question: string; answer: string });
    const shot = (r: { question: string; answer: string }) => `Question: ${r.question}\nAnswer: ${r.answer}\n\n`;
    assert.equal(buildContext(t, t.docs[2]!, 5), shot(rows[0]!) + shot(rows[1]!) + shot(rows[3]!) + shot(rows[4]!) + shot(rows[5]!) + `Question: ${rows[2]!.question}\nAnswer:`);
    assert.deepEqual(t.until, ['Question:', '</s>', '<|im_end|>']);
  });

  test('HumanEval: the prompt is the signature and docstring, zero-shot, Codex stop sequences', () => {
    const t = loadTask('humaneval', FIX + 'humaneval/HumanEval.jsonl.gz') as GenTask;
    assert.equal(t.docs.length, 20);
    assert.ok(buildContext(t, t.docs[0]!, 0).startsWith('from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'));
    assert.deepEqual(t.until, ['\nclass', '\ndef', '\n#', '\nif', '\nprint']);
  });
});

describe('readers', () => {
  test('CSV: quoted fields with "" escapes and commas stay one field', () => {
    const rows = parseCsv('"A ""x"", y",b\nc,"d\ne"\n', 'f.csv');
    assert.deepEqual(rows.map((r) => r.fields), [['A "x", y', 'b'], ['c', 'd\ne']]);
    assert.deepEqual(rows.map((r) => r.line), [1, 2]);
  });

  test('malformed files name the file and line', () => {
    const bad = join(TMP, 'bad.jsonl');
    writeFileSync(bad, '{"query": "Question: a", "choices": ["x"], "gold": 0}\n{oops\n');
    assert.throws(() => loadTask('arc_easy', bad), (e: Error) => e.message.startsWith(`${bad}:2: not valid JSON (`));
    const dir = join(TMP, 'mmlu'), testDir = join(dir, 'test');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(testDir, { recursive: true });
    writeFileSync(join(testDir, 'x_test.csv'), 'q,a,b,c,d,A\nq2,a,b,c,d,E\n');
    assert.throws(() => loadTask('mmlu', dir), { message: `${join(testDir, 'x_test.csv')}:2: answer 'E' is not one of A, B, C, D` });
    const hs = join(TMP, 'hs.txt');
    writeFileSync(hs, 'ctx\n3\na\nb\nc\n');
    assert.throws(() => loadTask('hellaswag', hs), /hs\.txt:5: expected 6 lines per task/);
    assert.throws(() => loadTask('gsm8k', join(TMP, 'nope.jsonl')), /nope\.jsonl: data file not found/);
  });
});

describe('metrics (hand-computed)', () => {
  test('acc and acc_norm: lls [-4, -6, -5] over choices of 2, 6 and 4 characters, gold 1', () => {
    // acc: argmax ll = 0 (≠ 1) → 0. acc_norm: ll/len = [-2, -1, -1.25] → argmax 1 → 1.
    const r = multipleChoice([-4, -6, -5], ['ab', 'abcdef', 'abcd'], 1);
    assert.deepEqual(r, { acc: 0, acc_norm: 1, pred: 0, pred_norm: 1 });
    assert.equal(pyLen('é😀'), 2); // Python len(): code points
  });

  test('MC2: p ∝ exp(ll); lls [ln .2, ln .1, ln .3, ln .4] with the first two true → (.2+.1)/1.0 = 0.3', () => {
    assert.ok(Math.abs(mc2([Math.log(0.2), Math.log(0.1), Math.log(0.3), Math.log(0.4)], [1, 1, 0, 0]) - 0.3) < 1e-12);
    // shifting every ll by a constant changes nothing (normalised mass)
    assert.ok(Math.abs(mc2([-1000 + Math.log(0.2), -1000 + Math.log(0.8)], [1, 0]) - 0.2) < 1e-12);
  });

  test('pass@k equals 1 − C(n−c, k)/C(n, k) for every small n, c, k', () => {
    const C = (n: number, k: number): number => (k < 0 || k > n ? 0 : k === 0 ? 1 : (C(n - 1, k - 1) * n) / k);
    for (let n = 1; n <= 8; n++) for (let c = 0; c <= n; c++) for (let k = 1; k <= n; k++) {
      assert.ok(Math.abs(passAtK(n, c, k) - (1 - C(n - c, k) / C(n, k))) < 1e-12, `n=${n} c=${c} k=${k}`);
    }
    assert.equal(passAtK(1, 1, 1), 1);
    assert.equal(passAtK(1, 0, 1), 0);
    assert.ok(Math.abs(passAtK(5, 2, 1) - 0.4) < 1e-12); // c/n for k = 1
    assert.ok(Math.abs(passAtK(4, 1, 2) - 0.5) < 1e-12); // 1 − C(3,2)/C(4,2) = 1 − 3/6
  });

  test('stderr is the sample standard deviation over √n: [1, 0, 1, 0] → √(1/3)/2', () => {
    assert.ok(Math.abs(meanStderr([1, 0, 1, 0]) - Math.sqrt(1 / 3) / 2) < 1e-12);
  });

  test('GSM8K: strict and flexible extraction on every gold answer give 100 % exact match', () => {
    for (const line of readFileSync(FIX + 'gsm8k/test.jsonl', 'utf8').trim().split('\n')) {
      const { answer } = JSON.parse(line) as { answer: string };
      assert.equal(exactMatch(gsm8kStrict(answer), answer), 1, answer);
      assert.equal(exactMatch(gsm8kFlexible(answer), answer), 1, answer);
    }
    const shared = new URL('../../shared/data/eval/gsm8k/test.jsonl', import.meta.url).pathname; // all 200 rows, where present
    if (!existsSync(shared)) return;
    const all = readFileSync(shared, 'utf8').trim().split('\n');
    const ok = all.filter((l) => { const { answer } = JSON.parse(l) as { answer: string }; return exactMatch(gsm8kStrict(answer), answer) && exactMatch(gsm8kFlexible(answer), answer); });
    assert.equal(ok.length, all.length);
  });

  test('GSM8K extraction details: strict needs "#### ", flexible takes the last number, normalisation drops $ , and a final .', () => {
    assert.equal(gsm8kStrict('so 5 apples\n#### 1,234'), '1,234');
    assert.equal(gsm8kStrict('the answer is 7'), '[invalid]');
    assert.equal(gsm8kFlexible('3 cats and $12.50.'), '$12.50.');
    assert.equal(gsm8kFlexible('cost 7'), '7');
    assert.equal(gsm8kNormalize('$1,234.'), '1234');
    assert.equal(exactMatch('$12.', 'x\n#### 12'), 1);
    assert.equal(exactMatch('[invalid]', 'x\n#### 12'), 0);
  });
});

describe('contamination (13-gram overlap)', () => {
  test('an item sharing 13 consecutive words with the corpus is dirty; 12 shared words are not', () => {
    const corpus = 'It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.';
    const idx = new NgramIndex([corpus]);
    assert.equal(normalizeWords('It was, the BEST!').join(' '), 'it was the best');
    assert.ok(idx.isDirty('Question: it was the best of times it was the worst of times it was the age? Answer:'));
    assert.ok(!idx.isDirty('it was the best of times it was the worst of times CHANGED'));
    assert.ok(idx.isDirty('the age of wisdom')); // shorter than 13 words: the whole item appears
    assert.ok(!idx.isDirty('the age of reason'));
  });
});
