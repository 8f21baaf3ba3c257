/**
 * What every subcommand shares: global flags, config loading, backend start-up, one-line errors with
 * exit codes (2 bad config/input, 1 failure, 130 interrupted), and the end-of-run summary table.
 */
import Table from 'cli-table3';
import type { z } from 'zod';
import { setVerifyHashes } from '../checkpoint/verify.js';
import { ConfigError, loadConfig } from '../config/load.js';
import type { TrainResult } from '../train/trainer.js';
import { InputError } from '../util/errors.js';
import { log, setupLogger } from '../util/log.js';
import type { GlobalArgs } from './global.js';

export { type GlobalArgs, type OutputArgs, globalOptions, outputOptions } from './global.js';
export { InputError } from '../util/errors.js';

/**
 * The stage config: --config file, then `extra` (config path → value from a flag; unset flags are
 * skipped), then --set. `o.flags` names the flag behind each `extra` path (path → flag name), so a bad
 * value is blamed on the flag, and a missing one asks for that flag; with no --config at all, a missing
 * value asks for --config (`o.command` names the example config).
 */
export function loadStageConfig<S extends z.ZodType>(
  schema: S,
  args: GlobalArgs,
  extra: Record<string, unknown> = {},
  o: { flags?: Record<string, string>; command?: string } = {},
): z.infer<S> {
  const flags: Record<string, string> = { 'train.seed': 'seed', 'sampling.seed': 'seed', ...o.flags };
  const labels: Record<string, string> = {};
  for (const [path, value] of Object.entries(extra)) {
    if (value === undefined) continue;
    // A flag named like the setting (max_num_seqs ← --max-num-seqs) needs no entry in o.flags.
    const named = path.split('.').pop()!.replace(/_/g, '-');
    const flag = flags[path] ?? (named in args ? named : undefined);
    if (!flag) continue;
    flags[path] = flag;
    if (typeof value === 'number' && Number.isNaN(value)) throw new ConfigError(`--${flag}: expected a number`);
    labels[path] = `--${flag} ${Array.isArray(value) ? value.map((v) => JSON.stringify(v)).join(' ') : JSON.stringify(value)}`;
  }
  try {
    return loadConfig(schema, args.config, args.set ?? [], extra, labels);
  } catch (err) {
    const missing = err instanceof ConfigError ? /^<config>: (\S+): missing required value/.exec(err.message) : null;
    if (!missing) throw err;
    const flag = flags[missing[1]!];
    if (flag) throw new ConfigError(`--${flag} is required (or ${missing[1]}: in a --config file)`);
    const command = o.command ?? (args as { _?: unknown[] })._?.[0]; // yargs' positional: the subcommand's name
    const example = `configs/${typeof command === 'string' ? command : 'pretrain'}.yaml`;
    throw new ConfigError(`--config is required: this command reads its settings from a YAML/JSON file (e.g. --config ${example}); without one, ${missing[1]} is missing`);
  }
}

export async function startBackend(args: GlobalArgs): Promise<void> {
  // Loaded here, not at the top: tfjs takes ~0.7 s to load, and config errors should answer before that.
  const { initBackend } = await import('../backend/index.js');
  const info = await initBackend(args.backend);
  // Falling back from the optional native packages is the usual case, not news: one debug line.
  if (info.tried.length) log().debug({ tried: info.tried }, `backends unavailable: ${info.tried.map((t) => t.name).join(', ')}`);
  log().info({ backend: info.name, detail: info.detail }, `using tfjs backend: ${info.name}`);
}

/** Wrap a command handler: logger, error → one line on stderr + exit code. */
export function handler<A extends GlobalArgs>(name: string, run: (args: A) => Promise<void>): (args: A) => Promise<void> {
  return async (args: A) => {
    setupLogger(args['log-level']);
    setVerifyHashes(args.verify !== false);
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

/** The rows every training stage reports, and exit code 130 (SIGINT) or 143 (SIGTERM) when a signal stopped the run early. */
export function trainingSummary(r: TrainResult): Record<string, unknown> {
  if (r.interrupted) process.exitCode = r.signal === 'SIGTERM' ? 143 : 130;
  return {
    steps: r.step,
    tokens_seen: r.tokensSeen,
    train_loss: r.finalLoss,
    ...(r.metrics.val_loss !== undefined ? { val_loss: r.metrics.val_loss, val_ppl: r.metrics.val_ppl } : {}),
    tokens_per_s: Math.round(r.tokensPerSecond),
    interrupted: r.interrupted,
  };
}
