import Table from 'cli-table3';
import type { CommandModule } from 'yargs';
import { CleanOnlyConfigSchema } from '../config/clean.js';
import { cleanCorpus } from '../data/clean/corpus.js';
import type { StepReport } from '../data/clean/pipeline.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary } from './common.js';

type Args = GlobalArgs & { samples?: number };

export const cleanCommand: CommandModule<GlobalArgs, Args> = {
  command: 'clean',
  builder: (y) => y
    .option('samples', { type: 'number', describe: 'write N removed examples per step to <out>.samples.jsonl' })
    .example('$0 clean --config configs/clean.yaml --samples 5', 'dedup, filter and scrub a corpus into JSONL'),
  handler: handler<Args>('clean', async (args) => {
    const cfg = loadStageConfig(CleanOnlyConfigSchema, args, { 'clean.samples': args.samples }, { flags: { 'clean.samples': 'samples' }, command: 'clean' });
    const r = await cleanCorpus(cfg);
    printCleanReport(args, r.steps);
    printSummary(args, 'clean', {
      out: r.out,
      docs_in: r.docsIn,
      docs_out: r.docsOut,
      bytes_in: r.bytesIn,
      bytes_out: r.bytesOut,
      seconds: r.seconds,
      ...(args.json ? { steps: r.steps } : {}),
    });
  }),
};

/** One row per cleaning step: documents and bytes in and out, share of bytes removed, the step's own counts. */
export function printCleanReport(args: GlobalArgs, steps: StepReport[]): void {
  if (args.json || steps.length === 0) return;
  const table = new Table({ head: ['step', 'docs in', 'docs out', 'bytes in', 'bytes out', 'removed', 'details'], style: { head: [], border: [] } });
  for (const s of steps) {
    const details = Object.entries(s.details).map(([k, v]) => `${k}=${v}`).join(' ');
    table.push([s.step, s.docs_in.toLocaleString('en-US'), s.docs_out.toLocaleString('en-US'), s.bytes_in.toLocaleString('en-US'), s.bytes_out.toLocaleString('en-US'), `${(100 * s.removed).toFixed(2)} %`, details]);
  }
  process.stdout.write(table.toString() + '\n');
}
