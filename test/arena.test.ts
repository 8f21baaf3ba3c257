/**
 * Arena ratings against independently computed numbers, judges, the battles file, the chart.
 *
 * Reference values for the 10-battle set below were computed with a separate Python script (numpy + scipy):
 * FastChat's compute_elo loop written out, and compute_mle_elo's weighted logistic regression (X rows ±ln 10,
 * wins weighted 2 and ties 1 per side, no intercept, no penalty) minimised with scipy BFGS from zero, ratings
 * 400·β + 1000. First Elo step by hand: a beats b from 1000/1000, expected 0.5, so a = 1000 + 4·0.5 = 1002, b = 998.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, test } from 'node:test';
import { readBattles } from '../src/eval/arena/battles.js';
import { arenaChartSvg, loadECharts } from '../src/eval/arena/chart.js';
import { rate, runArena } from '../src/eval/arena/index.js';
import { type AnswerPair, judgeByHuman, judgeWithRewardModel, sideBySide } from '../src/eval/arena/judge.js';
import { type Battle, type Winner, ELO_DEFAULTS, bootstrap, bradleyTerry, onlineElo, quantile, winRates } from '../src/eval/arena/ratings.js';

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-arena-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

const B = (model_a: string, model_b: string, winner: Winner): Battle => ({ model_a, model_b, winner });
const BATTLES: Battle[] = [
  B('a', 'b', 'model_a'), B('a', 'b', 'model_a'), B('b', 'a', 'model_a'), B('a', 'b', 'tie'),
  B('b', 'c', 'model_a'), B('c', 'b', 'model_b'), B('b', 'c', 'model_b'),
  B('a', 'c', 'model_a'), B('c', 'a', 'tie (bothbad)'), B('a', 'c', 'model_b'),
];
const close = (x: number, y: number, tol: number) => assert.ok(Math.abs(x - y) < tol, `${x} vs ${y}`);

describe('ratings', () => {
  test('online Elo (K 4, scale 400, base 10, init 1000) matches the reference', () => {
    assert.deepEqual(onlineElo([B('a', 'b', 'model_a')]), { a: 1002, b: 998 });
    const r = onlineElo(BATTLES);
    close(r.a!, 1001.7970800522, 1e-9);
    close(r.b!, 1000.0548159809, 1e-9);
    close(r.c!, 998.1481039668, 1e-9);
  });

  test('Bradley–Terry MLE matches the reference and centres on 1000', () => {
    const r = bradleyTerry(BATTLES);
    close(r.a!, 1035.473488, 1e-5);
    close(r.b!, 1003.57539, 1e-5);
    close(r.c!, 960.951122, 1e-5);
    close((r.a! + r.b! + r.c!) / 3, 1000, 1e-9);
    // Two models that beat each other once are equal; 3 wins to 1 gives P = 0.75, so R_a − R_b = 400·log10(3).
    assert.deepEqual(bradleyTerry([B('x', 'y', 'model_a'), B('x', 'y', 'model_b')]), { x: 1000, y: 1000 });
    const sweep = bradleyTerry([B('x', 'y', 'model_a'), B('x', 'y', 'model_a')]); // no finite MLE: large but finite
    assert.ok(Number.isFinite(sweep.x!) && sweep.x! > 2000 && Math.abs(sweep.x! + sweep.y! - 2000) < 1e-6, `${sweep.x}`);
    const r31 = bradleyTerry([B('x', 'y', 'model_a'), B('x', 'y', 'model_a'), B('y', 'x', 'model_b'), B('x', 'y', 'model_b')]);
    close(r31.x! - r31.y!, 400 * Math.log10(3), 1e-9);
  });

  test('bootstrap: the same seed gives the same intervals, another seed others; intervals are ordered', () => {
    const f = (b: Battle[]) => bradleyTerry(b);
    const x = bootstrap(BATTLES, f, 200, 7), y = bootstrap(BATTLES, f, 200, 7), z = bootstrap(BATTLES, f, 200, 8);
    assert.deepEqual(x, y);
    assert.notDeepEqual(x, z);
    // A resample where one model never loses has no finite MLE: the fit stops at a tolerance, still finite.
    for (const m of ['a', 'b', 'c']) assert.ok(Number.isFinite(x[m]!.lower) && Number.isFinite(x[m]!.upper), m);
    for (const m of ['a', 'b', 'c']) assert.ok(x[m]!.lower <= x[m]!.median && x[m]!.median <= x[m]!.upper && x[m]!.lower < x[m]!.upper, m);
    assert.equal(quantile([1, 2, 3, 4], 0.5), 2.5); // linear interpolation, as pandas
    assert.equal(quantile([0, 10], 0.025), 0.25);
  });

  test('win-rate matrix: row beats column over all their battles (ties count in the denominator)', () => {
    const w = winRates(BATTLES);
    assert.deepEqual(w.models, ['a', 'b', 'c']);
    assert.equal(w.winRate[0]![1], 2 / 4); // a beat b twice in 4 battles (one tie)
    assert.equal(w.winRate[1]![0], 1 / 4);
    assert.equal(w.winRate[1]![2], 2 / 3); // b beat c in 2 of 3
    assert.equal(w.winRate[0]![2], 1 / 3);
    assert.equal(w.counts[0]![1], 4);
    assert.ok(Number.isNaN(w.winRate[0]![0]!));
    const r = rate(BATTLES, { elo: ELO_DEFAULTS, bootstrap_rounds: 50, seed: 1 });
    assert.deepEqual(r.standings.map((s) => [s.model, s.wins, s.ties, s.losses]), [['a', 3, 2, 2], ['b', 3, 1, 3], ['c', 2, 1, 3]]);
  });
});

describe('battles and judges', () => {
  test('FastChat clean battles as a JSON list or JSONL; a bad winner names the file and line', () => {
    const list = join(TMP, 'clean.json'), lines = join(TMP, 'b.jsonl');
    writeFileSync(list, JSON.stringify(BATTLES.map((b, i) => ({ ...b, question_id: i, tstamp: 1 }))));
    writeFileSync(lines, BATTLES.map((b) => JSON.stringify(b)).join('\n') + '\n');
    assert.equal(readBattles(list).length, 10);
    assert.deepEqual(readBattles(lines).map((b) => b.winner), BATTLES.map((b) => b.winner));
    writeFileSync(lines, JSON.stringify(BATTLES[0]) + '\n' + JSON.stringify({ ...BATTLES[0], winner: 'both' }) + '\n');
    assert.throws(() => readBattles(lines), { message: `${lines}:2: winner 'both' is not one of model_a, model_b, tie, tie (bothbad)` });
  });

  const pairs: AnswerPair[] = [
    { question_id: 0, prompt: 'p0', model_a: 'x', model_b: 'y', answer_a: 'long answer', answer_b: 'short' },
    { question_id: 1, prompt: 'p1', model_a: 'x', model_b: 'y', answer_a: 'same', answer_b: 'sama' },
  ];

  test('reward-model judge: higher reward wins, within the margin a tie, each pair in both orders', () => {
    const rm = { score: (_p: string, a: string) => a.length }; // a stand-in scorer: longer is better
    const b = judgeWithRewardModel(pairs, rm, 0.5);
    assert.deepEqual(b.map((x) => [x.model_a, x.model_b, x.winner, x.swapped]), [
      ['x', 'y', 'model_a', false], ['y', 'x', 'model_b', true], ['x', 'y', 'tie', false], ['y', 'x', 'tie', true],
    ]);
  });

  test('human judge: anonymised side by side, votes saved as cast, resumes where it stopped', async () => {
    const votes = join(TMP, 'votes.jsonl');
    const session = async (keys: string) => {
      const input = new PassThrough(), output = new PassThrough();
      let shown = '';
      output.on('data', (d: Buffer) => (shown += d.toString()));
      input.end(keys);
      const r = await judgeByHuman(pairs, { input, output, votesPath: votes, seed: 3, columns: 80 });
      return { ...r, shown };
    };
    const first = await session('x\na\nq\n'); // an unknown key is ignored; one vote, then quit
    assert.equal(first.battles.length, 1);
    assert.ok(first.quit);
    const beforeVote = first.shown.slice(0, first.shown.indexOf('] A is better'));
    assert.ok(!/\bx\b|\by\b/.test(beforeVote.replace(/\[a\]|\[b\]/g, '')), 'model names are hidden until the vote');
    const v = first.battles[0]!;
    // "A" is whichever answer was shown first: model_b's when the pair was swapped.
    assert.equal(v.winner, v.swapped ? 'model_b' : 'model_a');
    const second = await session('t\n');
    assert.match(second.shown, /resuming: 1 votes already/);
    assert.equal(second.battles.length, 2);
    assert.equal(second.battles[1]!.winner, 'tie');
    assert.equal(readFileSync(votes, 'utf8').trim().split('\n').length, 2);
    assert.deepEqual(new Set(second.battles.map((b) => b.question_id)), new Set([0, 1]));
  });

  test('side by side: both answers wrapped into two columns', () => {
    const s = sideBySide('one two three four five six', 'right', 43).split('\n');
    assert.equal(s[0], 'Answer A             │ Answer B');
    assert.equal(s[2], 'one two three four   │ right');
    assert.equal(s[3], 'five six             │ ');
  });
});

describe('arena output', () => {
  test('battles:FILE → ratings.json (and arena.svg drawn by ECharts when it is installed)', async (t) => {
    const file = join(TMP, 'battles.jsonl'), out = join(TMP, 'arena');
    writeFileSync(file, BATTLES.map((b) => JSON.stringify(b)).join('\n') + '\n');
    const r = await runArena({ models: {}, judge: `battles:${file}`, out_dir: out, chat: false, sampling: { max_tokens: 1, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [] }, margin: 0, bootstrap_rounds: 100, seed: 1, elo: ELO_DEFAULTS }, { input: new PassThrough(), output: new PassThrough() });
    const json = JSON.parse(readFileSync(join(out, 'ratings.json'), 'utf8')) as { leaderboard: { model: string; bt: { rating: number } }[]; win_rate: { winRate: (number | null)[][] } };
    assert.deepEqual(json.leaderboard.map((s) => s.model), ['a', 'b', 'c']);
    close(json.leaderboard[0]!.bt.rating, 1035.473488, 1e-5);
    assert.equal(json.win_rate.winRate[0]![0], null);
    const echarts = loadECharts();
    if (typeof echarts === 'string') {
      assert.match(r.chartSkipped!, /chart skipped/);
      t.skip(`ECharts not installed (${echarts})`);
      return;
    }
    const svg = readFileSync(r.files.chart!, 'utf8');
    assert.ok(svg.startsWith('<svg') && svg.includes('Bradley–Terry rating'), 'an SVG with its title');
    for (const label of ['1035', '0.50', '0.67', '0.25']) assert.ok(svg.includes(label), `chart shows ${label}`);
    assert.equal(arenaChartSvg(echarts, 't', { a: { rating: 1, median: 1, lower: 0, upper: 2 }, b: { rating: 0, median: 0, lower: -1, upper: 1 } }, winRates([B('a', 'b', 'model_a')])).slice(0, 4), '<svg');
  });
});
