/**
 * KV-reuse speed-up on MMLU (5-shot): every question's context run once with its KV cache reused for the four
 * answer letters, against every (context, " X") sequence run in full, batched and sorted by length. Both
 * through the real runner (src/eval/runner.ts) on the imported stories260K; runs interleaved and repeated,
 * since the machine is shared. Also checks that both give the same accuracy.
 *
 *   node --import tsx bench/eval-kv.ts [--limit 40] [--repeats 3] [--batch 8] [--data ../shared/data/eval/mmlu] [--backend wasm]
 */
import { parseArgs } from 'node:util';
import { type BackendName, initBackend } from '../src/backend/index.js';
import { DEFAULT_EVAL_OPTIONS, evaluate } from '../src/eval/runner.js';
import { loadTask } from '../src/eval/tasks.js';
import { importLlama2c } from '../src/model/llama2c.js';

const { values: args } = parseArgs({
  options: {
    limit: { type: 'string', default: '40' }, repeats: { type: 'string', default: '3' }, batch: { type: 'string', default: '8' },
    data: { type: 'string', default: '../shared/data/eval/mmlu' }, backend: { type: 'string', default: 'wasm' },
  },
});
await initBackend(args.backend as BackendName);
const model = importLlama2c('test/fixtures/stories260K/stories260K.bin', 'test/fixtures/stories260K/tok512.bin');
const task = loadTask('mmlu', args.data!);
const limit = Number(args.limit), batchSize = Number(args.batch);
const rows: Record<string, number[]> = { shared: [], unshared: [] };
const acc: Record<string, number> = {};
const positions: Record<string, number> = {};
for (let r = 0; r < Number(args.repeats); r++) {
  for (const mode of r % 2 ? ['unshared', 'shared'] : ['shared', 'unshared']) {
    const run = await evaluate(model, [task], { ...DEFAULT_EVAL_OPTIONS, limit, batchSize, shareContext: mode === 'shared' });
    rows[mode]!.push(run.throughput.loglik_requests_per_s);
    acc[mode] = run.tasks[0]!.metrics['acc,none'] as number;
    positions[mode] = run.throughput.tokens_run;
    process.stderr.write(`${mode}: ${run.throughput.loglik_requests} requests in ${run.throughput.loglik_seconds.toFixed(2)} s (${run.throughput.loglik_requests_per_s.toFixed(1)} req/s, ${run.throughput.forwards} forwards, ${run.throughput.tokens_run} positions)\n`);
  }
}
const range = (xs: number[]) => `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}`;
const speedups = rows.shared!.map((s, i) => s / rows.unshared![i]!);
console.log(`MMLU 5-shot, stories260K, ${limit} questions × 4 choices, batch ${batchSize}, ${args.backend}`);
console.log(`  shared context (KV reuse): ${range(rows.shared!)} requests/s, ${positions.shared} positions run, acc ${acc.shared}`);
console.log(`  full sequences (batched):  ${range(rows.unshared!)} requests/s, ${positions.unshared} positions run, acc ${acc.unshared}`);
console.log(`  speed-up: ${range(speedups)}x (${speedups.map((s) => s.toFixed(2)).join(', ')})`);
if (acc.shared !== acc.unshared) { console.error('accuracy differs between the two paths'); process.exitCode = 1; }
