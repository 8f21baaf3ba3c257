/**
 * What every subcommand shares: global flags, config loading, backend start-up, one-line errors with
 * exit codes (2 bad config/input, 1 failure, 130 interrupted), and the end-of-run summary table.
 */
import Table from 'cli-table3';
import type { z } from 'zod';
import { ConfigError, loadConfig } from '../config/load.js';
import type { TrainResult } from '../train/trainer.js';
import { log, setupLogger } from '../util/log.js';
import type { GlobalArgs } from './global.js';

export { type GlobalArgs, globalOptions } from './global.js';

/** Thrown for bad user input that is not a config field (missing file, malformed row): exit code 2. */
export class InputError extends Error {}

export function loadStageConfig<S extends z.ZodType>(schema: S, args: GlobalArgs, extra: Record<string, unknown> = {}): z.infer<S> {
  return loadConfig(schema, args.config, args.set ?? [], extra);
}

export async function startBackend(args: GlobalArgs): Promise<void> {
  // Loaded here, not at the top: tfjs takes ~0.7 s to load, and config errors should answer before that.
  const { initBackend } = await import('../backend/index.js');
  const info = await initBackend(args.backend);
  for (const t of info.tried) log().info({ backend: t.name, reason: t.error }, 'backend unavailable, falling back');
  log().info({ backend: info.name, detail: info.detail }, `using tfjs backend: ${info.name}`);
}

/** Wrap a command handler: logger, error → one line on stderr + exit code. */
export function handler<A extends GlobalArgs>(name: string, run: (args: A) => Promise<void>): (args: A) => Promise<void> {
  return async (args: A) => {
    setupLogger(args['log-level']);
    try {
      await run(args);
    } catch (err) {
      const e = err as Error;
      const code = e instanceof ConfigError || e instanceof InputError || isInputError(e) ? 2 : 1;
      process.stderr.write(`llmctl ${name}: ${oneLine(e.message)}\n`);
      if (args['log-level'] === 'debug' || args['log-level'] === 'trace') process.stderr.write(`${e.stack}\n`);
      process.exitCode = code;
    }
  };
}

/** File and data errors name their file first ("path: reason"); treat those as bad input. */
function isInputError(e: Error): boolean {
  return /^(\S+\.(ya?ml|json|jsonl|txt|bin|safetensors|csv)|[^:\s]+\/[^:\s]*): /.test(e.message) || /ENOENT/.test(e.message);
}

function oneLine(s: string): string {
  return s.split('\n')[0]!.trim();
}

/** The end-of-run summary: a table on stdout, or one JSON object with --json. */
export function printSummary(args: GlobalArgs, title: string, rows: Record<string, unknown>): void {
  if (args.json) {
    process.stdout.write(JSON.stringify(rows) + '\n');
    return;
  }
  const table = new Table({ head: [title, ''], style: { head: [], border: [] } });
  for (const [k, v] of Object.entries(rows)) table.push([k, formatValue(v)]);
  process.stdout.write(table.toString() + '\n');
}

function formatValue(v: unknown): string {
  if (typeof v === 'number') return Number.isInteger(v) ? v.toLocaleString('en-US') : String(Number(v.toPrecision(5)));
  if (typeof v === 'object' && v !== null) return JSON.stringify(v);
  return String(v);
}

/** The rows every training stage reports, and exit code 130 when Ctrl-C stopped the run early. */
export function trainingSummary(r: TrainResult): Record<string, unknown> {
  if (r.interrupted) process.exitCode = 130;
  return {
    steps: r.step,
    tokens_seen: r.tokensSeen,
    train_loss: r.finalLoss,
    ...(r.metrics.val_loss !== undefined ? { val_loss: r.metrics.val_loss, val_ppl: r.metrics.val_ppl } : {}),
    tokens_per_s: Math.round(r.tokensPerSecond),
    interrupted: r.interrupted,
  };
}
