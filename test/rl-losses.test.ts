/** PPO / GRPO pieces against hand-computed numbers (src/align/rl-losses.ts). */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { ruleReward } from '../src/align/rule-reward.js';
import {
  KlController,
  clippedValueLoss,
  entropyFromLogProbs,
  gae,
  groupAdvantages,
  grpoLoss,
  klEstimate,
  ppoPolicyLoss,
  whiten,
} from '../src/align/rl-losses.js';

await initBackend('wasm');

const close = (a: number, b: number, tol = 1e-5, what = '') => assert.ok(Math.abs(a - b) <= tol, `${what} ${a} vs ${b}`);
const closeRows = (a: number[][], b: number[][], tol = 1e-6) => a.forEach((r, i) => r.forEach((v, t) => close(v, b[i]![t]!, tol, `[${i}][${t}]`)));
const num = (t: tf.Tensor) => {
  const v = t.dataSync()[0]!;
  t.dispose();
  return v;
};
const t2 = (rows: number[][]) => tf.tensor2d(rows);

describe('GAE', () => {
  test('γ=1, λ=0.95 with the score on the last token and padding after EOS', () => {
    // t=2: δ = 1 − 0.3 = 0.7; t=1: δ = 0.3 − 0.4 = −0.1, A = −0.1 + 0.95·0.7 = 0.565; t=0: A = −0.1 + 0.95·0.565 = 0.43675
    const { advantages, returns } = gae([[0, 0, 1, 0]], [[0.5, 0.4, 0.3, 9]], [[1, 1, 1, 0]], 1, 0.95);
    closeRows(advantages, [[0.43675, 0.565, 0.7, 0]]);
    closeRows(returns, [[0.93675, 0.965, 1.0, 0]]);
  });

  test('γ=0.9, λ=0.5; rows are independent; the value of a padding slot is never read', () => {
    // row 0: t=1: δ = 2 − 1 = 1; t=0: δ = 1 + 0.9·1 − 0.5 = 1.4, A = 1.4 + 0.45·1 = 1.85
    const { advantages, returns } = gae([[1, 2, 0], [3, 0, 0]], [[0.5, 1, 100], [1, 100, 100]], [[1, 1, 0], [1, 0, 0]], 0.9, 0.5);
    closeRows(advantages, [[1.85, 1, 0], [2, 0, 0]]);
    closeRows(returns, [[2.35, 2, 0], [3, 0, 0]]);
  });
});

describe('whitening', () => {
  test('masked mean 2 and unbiased variance 1 over [1, 2, 3] (99 is padding)', () => {
    closeRows(whiten([[1, 2, 3, 99]], [[1, 1, 1, 0]]), [[-1, 0, 1, 0]]);
    closeRows(whiten([[1, 2, 3, 99]], [[1, 1, 1, 0]], false), [[1, 2, 3, 0]]);
  });
});

describe('GRPO group advantages', () => {
  test('(r − mean)/(unbiased std + 1e-4) per group; an all-equal group gives 0', () => {
    // group [1,0,0,0]: mean 0.25, std √(0.75/3) = 0.5
    const a = groupAdvantages([1, 0, 0, 0, 2, 2, 2, 2], 4);
    [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0, 0, 0, 0].forEach((v, i) => close(a[i]!, v, 1e-9));
    assert.throws(() => groupAdvantages([1, 2, 3], 2), /groups of 2/);
    assert.throws(() => groupAdvantages([1], 1), /at least 2/);
  });
});

describe('KL', () => {
  test('k1, k2, k3 for π = 0.5, π_ref = 0.25: ln 2, ½ln²2, ln 2 − ½', () => {
    const lp = tf.scalar(Math.log(0.5)), lr = tf.scalar(Math.log(0.25));
    close(num(klEstimate(lp, lr, 'k1')), Math.LN2);
    close(num(klEstimate(lp, lr, 'k2')), 0.5 * Math.LN2 ** 2);
    close(num(klEstimate(lp, lr, 'k3')), Math.LN2 - 0.5);
    for (const k of ['k1', 'k2', 'k3'] as const) assert.ok(num(klEstimate(lp, lp, k)) === 0, `${k} of π against itself`); // (−0 counts)
    tf.dispose([lp, lr]);
  });

  test('adaptive controller (Ziegler et al.): β·(1 + clip(KL/target − 1, ±0.2)·n/horizon); fixed β stays', () => {
    const up = new KlController(0.1, 6, 10000);
    up.update(9, 256); // error clipped to +0.2: ×1.00512
    close(up.value, 0.100512, 1e-12);
    const down = new KlController(0.1, 6, 10000);
    down.update(3, 256); // error −0.5 clipped to −0.2: ×0.99488
    close(down.value, 0.099488, 1e-12);
    const mild = new KlController(0.2, 4, 100);
    mild.update(4.4, 10); // error 0.1: ×1.01
    close(mild.value, 0.202, 1e-12);
    const fixed = new KlController(0.05);
    fixed.update(100, 1000);
    assert.equal(fixed.value, 0.05);
  });
});

describe('PPO losses', () => {
  // ratios 1.5 (A=1, clipped at 1.2), 0.6 (A=−1, clipped at 0.8), 1 (A=2), and a padding token.
  const logp = () => t2([[Math.log(0.75), Math.log(0.3), Math.log(0.5), Math.log(0.9)]]);
  const old = () => t2([[Math.log(0.5), Math.log(0.5), Math.log(0.5), Math.log(0.1)]]);
  const adv = () => t2([[1, -1, 2, 5]]);
  const mask = () => t2([[1, 1, 1, 0]]);

  test('clipped surrogate: loss (−1.2 + 0.8 − 2)/3, clipfrac 2/3, mean ratio, approx KL', () => {
    const [a, b, c, d] = [logp(), old(), adv(), mask()];
    const out = ppoPolicyLoss(a, b, c, d, 0.2);
    close(num(out.loss), -0.8);
    close(num(out.clipfrac), 2 / 3);
    close(num(out.ratio), (1.5 + 0.6 + 1) / 3);
    close(num(out.approxKl), (0.5 * (Math.log(1.5) ** 2 + Math.log(0.6) ** 2)) / 3);
    tf.dispose([a, b, c, d]);
  });

  test('the gradient is cut on clipped tokens and is −A·ρ/n on the others', () => {
    const [b, c, d] = [old(), adv(), mask()];
    const g = tf.grad((lp: tf.Tensor) => ppoPolicyLoss(lp as tf.Tensor2D, b, c, d, 0.2).loss)(logp());
    const got = Array.from(g.dataSync());
    [0, 0, -2 / 3, 0].forEach((v, i) => close(got[i]!, v, 1e-6, `token ${i}`));
    tf.dispose([g, b, c, d]);
  });

  test('ratio exactly 1 when logp equals the old logp: clipfrac 0, loss −mean A', () => {
    const [a, c, d] = [logp(), adv(), mask()];
    const out = ppoPolicyLoss(a, a, c, d, 0.2);
    assert.equal(num(out.ratio), 1);
    assert.equal(num(out.clipfrac), 0);
    assert.equal(num(out.approxKl), 0);
    close(num(out.loss), -(1 - 1 + 2) / 3);
    tf.dispose([a, c, d]);
  });

  test('clipped value loss: ½·mean max((V−R)², (V_clip−R)²) = ½(1.69 + 0.09 + 0.16)/3', () => {
    const v = t2([[1, 0, 0.6, 7]]), oldV = t2([[0.5, 0.5, 0.5, 0]]), ret = t2([[2, 0, 1, 0]]), m = t2([[1, 1, 1, 0]]);
    const out = clippedValueLoss(v, oldV, ret, m, 0.2);
    close(num(out.loss), (0.5 * (1.69 + 0.09 + 0.16)) / 3);
    close(num(out.clipfrac), 2 / 3);
    tf.dispose([v, oldV, ret, m]);
  });

  test('GRPO: per-sequence mean of −A + β·k3, then the mean over sequences', () => {
    // row 0: two tokens, π = 0.5, π_ref = 0.25, A = 1: −1 + 0.1·(ln 2 − 0.5) each; row 1: one token (+ padding), A = −1, no KL.
    const lp = t2([[Math.log(0.5), Math.log(0.5)], [Math.log(0.4), 0]]);
    const ref = t2([[Math.log(0.25), Math.log(0.25)], [Math.log(0.4), 3]]);
    const a = t2([[1, 1], [-1, -1]]), m = t2([[1, 1], [1, 0]]);
    const out = grpoLoss(lp, lp, ref, a, m, 0.2, 0.1);
    close(num(out.loss), (-1 + 0.1 * (Math.LN2 - 0.5) + 1) / 2);
    close(num(out.kl), (Math.LN2 - 0.5) / 2);
    assert.equal(num(out.clipfrac), 0);
    tf.dispose([lp, ref, a, m, out.ratio, out.approxKl]);
  });

  test('entropy of [¼, ¾] from its log-probs = −(¼ln¼ + ¾ln¾)', () => {
    const l = tf.tensor2d([[Math.log(0.25), Math.log(0.75)]]);
    close(num(entropyFromLogProbs(l)), -(0.25 * Math.log(0.25) + 0.75 * Math.log(0.75)));
    l.dispose();
  });
});

describe('rule rewards', () => {
  test('regex (a /g pattern scores the same every time), contains (any of, case-folded), length (−|n − target|/target)', () => {
    const re = ruleReward({ type: 'regex', pattern: 'ab+', flags: 'g', score: 2 });
    assert.deepEqual([re({ text: 'xabb', tokens: 3 }), re({ text: 'xabb', tokens: 3 }), re({ text: 'ba', tokens: 2 })], [2, 2, 0]);
    const has = ruleReward({ type: 'contains', text: ['You', 'thee'], case_sensitive: false, score: 1 });
    assert.deepEqual([has({ text: 'I told YOU', tokens: 3 }), has({ text: 'for thee', tokens: 2 }), has({ text: 'me', tokens: 1 })], [1, 1, 0]);
    const exact = ruleReward({ type: 'contains', text: 'You', case_sensitive: true, score: 1 });
    assert.equal(exact({ text: 'you', tokens: 1 }), 0);
    const len = ruleReward({ type: 'length', target: 8, unit: 'tokens' });
    assert.deepEqual([len({ text: '', tokens: 8 }), len({ text: '', tokens: 4 }), len({ text: '', tokens: 24 })], [0, -0.5, -2]);
    assert.equal(ruleReward({ type: 'length', target: 4, unit: 'chars' })({ text: 'abcdef', tokens: 1 }), -0.5);
    assert.throws(() => ruleReward({ type: 'regex', pattern: '(', flags: '', score: 1 }), /reward\.pattern: /);
  });
});
