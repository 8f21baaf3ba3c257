/**
 * Preference losses (src/align/losses.ts) against numbers computed by hand (see each comment), the
 * exact gradient of log σ at 0 (where DPO starts), and the summed response log-probability.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { bradleyTerryLoss, dpoLoss, logSigmoid, sequenceLogps } from '../src/align/losses.js';

await initBackend('wasm');

const t1 = (v: number[]) => tf.tensor1d(v);
const num = (t: tf.Tensor) => {
  const v = t.dataSync()[0]!;
  t.dispose();
  return v;
};
const arr = (t: tf.Tensor) => {
  const v = Array.from(t.dataSync());
  t.dispose();
  return v;
};
const close = (a: number, b: number, tol = 1e-6) => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);

describe('Bradley–Terry', () => {
  // r_c = [2, 0], r_r = [1, 1]: differences [1, −1]; −log σ(1) = log(1 + e^−1) = 0.3132617,
  // −log σ(−1) = 1.3132617; mean 0.8132617.
  test('mean −log σ(r_c − r_r)', () => close(num(bradleyTerryLoss(t1([2, 0]), t1([1, 1]))), 0.8132617));
  // margin [0.5, 0]: differences [0.5, −1]; −log σ(0.5) = 0.4740770 → mean (0.4740770 + 1.3132617) / 2.
  test('per-pair margin', () => close(num(bradleyTerryLoss(t1([2, 0]), t1([1, 1]), { margin: t1([0.5, 0]) })), 0.8936693));
  // center 0.1: (r_c + r_r)² = [9, 1], mean 5 → + 0.5.
  test('center_rewards_coefficient', () => close(num(bradleyTerryLoss(t1([2, 0]), t1([1, 1]), { centerRewardsCoefficient: 0.1 })), 1.3132617));
  test('stable for large reward gaps', () => {
    close(num(bradleyTerryLoss(t1([200]), t1([0]))), 0);
    close(num(bradleyTerryLoss(t1([0]), t1([200]))), 200, 1e-4);
  });
});

describe('DPO losses', () => {
  // π_c = [−10, −12], π_r = [−14, −11], ref_c = [−11, −12], ref_r = [−12, −10]
  // z = (π_c − π_r) − (ref_c − ref_r) = [4 − 1, −1 − (−2)] = [3, 1]; β = 0.1 → βz = [0.3, 0.1].
  const logps = () => ({ policyChosen: t1([-10, -12]), policyRejected: t1([-14, -11]), refChosen: t1([-11, -12]), refRejected: t1([-12, -10]) });
  const run = (o: Parameters<typeof dpoLoss>[1]) => {
    const l = logps();
    const r = dpoLoss(l, o);
    Object.values(l).forEach((t) => t.dispose());
    return { losses: arr(r.losses), chosen: arr(r.chosenRewards), rejected: arr(r.rejectedRewards) };
  };
  test('sigmoid: −log σ(βz) = [0.5543552, 0.6443967]; rewards β(π − ref)', () => {
    const r = run({ beta: 0.1, lossType: 'sigmoid' });
    close(r.losses[0]!, 0.5543552);
    close(r.losses[1]!, 0.6443967);
    close(r.chosen[0]!, 0.1); // 0.1 · (−10 − −11)
    close(r.chosen[1]!, 0);
    close(r.rejected[0]!, -0.2); // 0.1 · (−14 − −12)
    close(r.rejected[1]!, -0.1);
  });
  test('label smoothing 0.1: 0.9·(−log σ(βz)) + 0.1·(−log σ(−βz)) = [0.5843552, 0.6543967]', () => {
    const r = run({ beta: 0.1, lossType: 'sigmoid', labelSmoothing: 0.1 });
    close(r.losses[0]!, 0.5843552);
    close(r.losses[1]!, 0.6543967);
  });
  test('ipo: (z − 1/(2β))² = [(3 − 5)², (1 − 5)²] = [4, 16]', () => assert.deepEqual(run({ beta: 0.1, lossType: 'ipo' }).losses, [4, 16]));
  test('hinge: max(0, 1 − βz) = [0.7, 0.9]', () => {
    const r = run({ beta: 0.1, lossType: 'hinge' });
    close(r.losses[0]!, 0.7);
    close(r.losses[1]!, 0.9);
  });
  test('policy = reference: the sigmoid loss is exactly log 2', () => {
    const p = t1([-7.25, -3.5]), q = t1([-9.125, -1]);
    const r = dpoLoss({ policyChosen: p, policyRejected: q, refChosen: p, refRejected: q }, { beta: 0.1, lossType: 'sigmoid' });
    assert.deepEqual(arr(r.losses), [Math.fround(Math.LN2), Math.fround(Math.LN2)]);
    r.chosenRewards.dispose();
    r.rejectedRewards.dispose();
    p.dispose();
    q.dispose();
  });
});

test('log σ has the exact gradient σ(−x), also at x = 0', () => {
  const g = tf.grad((x: tf.Tensor) => tf.sum(logSigmoid(x)));
  const x = t1([0, 2, -3, 40]);
  const got = arr(g(x));
  x.dispose();
  [0.5, 1 / (1 + Math.exp(2)), 1 / (1 + Math.exp(-3)), 0].forEach((want, i) => close(got[i]!, want));
});

test('sequenceLogps sums log-probs where the mask is 1', () => {
  // one row, 2 positions, vocab 2: position 0 logits [0, 0] → p(1) = 1/2; position 1 [ln 3, 0] → p(0) = 3/4.
  const logits = tf.tensor3d([[[0, 0], [Math.log(3), 0]]]);
  const targets = tf.tensor1d([1, 0], 'int32');
  const both = t1([1, 1]), second = t1([0, 1]);
  close(num(sequenceLogps(logits, targets, both)), Math.log(0.5) + Math.log(0.75)); // −0.9808293
  close(num(sequenceLogps(logits, targets, second)), Math.log(0.75));
  [logits, targets, both, second].forEach((t) => t.dispose());
});
