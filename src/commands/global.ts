/** The flags every command takes. Kept free of heavy imports: `llmctl --help` loads only this and the registry. */
import type { Argv } from 'yargs';
import { type BackendName, BACKENDS } from '../backend/names.js';
import type { LogLevel } from '../util/log.js'; // type only: erased, loads nothing

export interface GlobalArgs {
  config?: string;
  set?: string[];
  backend: BackendName;
  seed?: number;
  'log-level': LogLevel;
  json: boolean;
  verify: boolean;
}

export function globalOptions<T>(y: Argv<T>) {
  return y
    .option('config', { alias: 'c', type: 'string', describe: 'YAML or JSON config file' })
    .option('set', { type: 'string', array: true, describe: 'override a config field: --set train.max_steps=100' })
    .option('backend', { type: 'string', choices: BACKENDS as BackendName[], default: 'auto' as BackendName, describe: 'tensorflow (GPU/CPU native) > wasm > cpu' })
    .option('seed', { type: 'number', describe: 'random seed (training batches, init, sampling)' })
    .option('log-level', { type: 'string', choices: ['trace', 'debug', 'info', 'warn', 'error', 'silent'] as LogLevel[], default: 'info' as LogLevel, describe: 'pino log level (JSON lines on stderr)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the summary as JSON on stdout' })
    .option('verify', {
      type: 'boolean', default: true,
      describe: 'check every checkpoint file read against the sha256 in its manifest.json (--no-verify: sizes only, faster on big checkpoints)',
    });
}

export interface OutputArgs {
  resume: boolean;
  overwrite: boolean;
  force: boolean;
}

/** The flags of a command that trains into out_dir (see src/checkpoint/output.ts for the policy). */
export function outputOptions<T>(y: Argv<T>) {
  return y
    .option('resume', { type: 'boolean', default: false, describe: 'continue the trainer checkpoint in out_dir (same config except train.max_steps / *_every / eval_batches)' })
    .option('overwrite', { type: 'boolean', default: false, describe: 'replace the checkpoint already in out_dir (without it, an existing one is an error)' })
    .option('force', { type: 'boolean', default: false, describe: 'skip the check that the model fits in memory' });
}
