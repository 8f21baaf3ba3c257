/**
 * The one policy for the directory a run writes (used by the trainer, the checkpoint writer and every
 * stage through resumableDir):
 *   - recover what a killed save left beside it, then take its lock (one writer at a time, lock.ts);
 *   - a new run refuses a directory that already holds something, unless --overwrite (and then only a
 *     checkpoint or an empty directory: never an arbitrary folder) or --resume;
 *   - --resume needs a trainer checkpoint there, and one made by the same run: the resolved stage config
 *     must match the checkpoint's except for the settings listed in RESUME_MAY_CHANGE, and the inputs'
 *     identity (sha256 of data, tokenizer, base) must be unchanged. A mismatch names the field.
 * The directory stays open (locked) until closeOutputDir or the end of the process.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InputError } from '../util/errors.js';
import { log } from '../util/log.js';
import { recoverDir } from './dir.js';
import { acquireLock, releaseLock } from './lock.js';
import { MANIFEST_FILE, TRAINER_STATE_FILE, readManifest, readTrainerState } from './manifest.js';

export interface OutputOptions {
  /** Continue the trainer checkpoint in the directory (it must exist and match this run). */
  resume?: boolean;
  /** Replace a checkpoint that is already there (the old one stays until the first save). */
  overwrite?: boolean;
  /** The resolved stage config, compared with the checkpoint's manifest on resume. */
  config?: unknown;
  /** What the run reads, by content (e.g. { data: sha256, tokenizer: sha256 }), compared on resume. */
  inputs?: Record<string, string>;
}

/**
 * Config fields a resumed run may change (dotted paths; the rest must match the checkpoint). Paths to
 * inputs may change too (a moved or relative path): their content is compared through `inputs`.
 */
export const RESUME_MAY_CHANGE = [
  'train.max_steps', 'train.eval_every', 'train.eval_batches', 'train.save_every', 'train.log_every',
  'out_dir', 'data.dir', 'data.path', 'base', 'init_from',
];

export interface OutputDir {
  dir: string;
  /** Set when resuming: the directory holding the trainer state to continue from. */
  resumeDir?: string;
}

const open = new Map<string, OutputDir>();

export function isOutputOpen(dir: string): boolean {
  return open.has(resolve(dir));
}

/** Open `dir` for writing under the policy above. Opening a directory this process already holds is a no-op. */
export function openOutputDir(dir: string, o: OutputOptions = {}): OutputDir {
  const key = resolve(dir);
  const already = open.get(key);
  if (already) return already;
  if (o.resume && o.overwrite) throw new InputError(`${dir}: --resume and --overwrite exclude each other (continue the checkpoint, or replace it)`);
  acquireLock(dir);
  try {
    const touched = recoverDir(dir);
    if (touched.length) log().warn({ dir, recovered: touched }, 'recovered leftovers of an interrupted checkpoint save');
    const handle: OutputDir = { dir, resumeDir: o.resume ? checkResumable(dir, o) : undefined };
    if (!o.resume) checkWritable(dir, Boolean(o.overwrite));
    open.set(key, handle);
    return handle;
  } catch (err) {
    releaseLock(dir);
    throw err;
  }
}

/** sha256 of each named file (missing files are left out): the `inputs` of a run. */
export function contentIds(files: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, path] of Object.entries(files)) {
    if (existsSync(path) && statSync(path).isFile()) out[name] = createHash('sha256').update(readFileSync(path)).digest('hex');
  }
  return out;
}

export function closeOutputDir(dir: string): void {
  if (open.delete(resolve(dir))) releaseLock(dir);
}

function checkWritable(dir: string, overwrite: boolean): void {
  if (!existsSync(dir)) return;
  if (!statSync(dir).isDirectory()) throw new InputError(`${dir}: exists and is not a directory`);
  const entries = readdirSync(dir);
  if (entries.length === 0) return;
  const isCheckpoint = entries.includes(MANIFEST_FILE) || entries.includes('config.json') || entries.includes('adapter_config.json');
  if (!isCheckpoint) throw new InputError(`${dir}: exists and is not an llmctl checkpoint (${entries.length} other entries); choose another output directory`);
  if (!overwrite) throw new InputError(`${dir}: already holds ${describe(dir)}; pass --overwrite to replace it or --resume to continue it`);
  log().warn({ dir }, `--overwrite: ${dir} holds ${describe(dir)}, which the first save of this run replaces`);
}

function describe(dir: string): string {
  try {
    const m = readManifest(dir);
    const step = existsSync(join(dir, TRAINER_STATE_FILE)) ? `, step ${readTrainerState(dir).step}` : '';
    return `a checkpoint (stage ${m.stage}${step}, saved ${m.created_at})`;
  } catch {
    return 'a checkpoint';
  }
}

function checkResumable(dir: string, o: OutputOptions): string {
  if (!existsSync(join(dir, TRAINER_STATE_FILE))) {
    throw new InputError(`${dir}: nothing to resume (no ${TRAINER_STATE_FILE}: no trainer checkpoint there); run without --resume to start a new run`);
  }
  if (o.config === undefined && o.inputs === undefined) return dir;
  const manifest = readManifest(dir);
  const where = join(dir, MANIFEST_FILE);
  const refuse = (field: string, saved: string, now: string) => {
    throw new InputError(
      `${where}: cannot resume: ${field} is ${saved} in the checkpoint but ${now} now; ` +
        `a resumed run may change only ${RESUME_MAY_CHANGE.slice(0, 5).join(', ')} (and the paths of unchanged inputs)`,
    );
  };
  if (o.config !== undefined) {
    const diff = firstDifference(manifest.config, JSON.parse(JSON.stringify(o.config)), '');
    if (diff) refuse(diff.path, show(diff.saved), show(diff.now));
  }
  for (const [name, hash] of Object.entries(o.inputs ?? {})) {
    const saved = manifest.inputs?.[name];
    if (saved !== undefined && saved !== hash) refuse(`the ${name} (sha256)`, saved.slice(0, 12) + '…', hash.slice(0, 12) + '…');
  }
  return dir;
}

/** First dotted path where two JSON values differ, skipping RESUME_MAY_CHANGE. */
function firstDifference(saved: unknown, now: unknown, path: string): { path: string; saved: unknown; now: unknown } | undefined {
  if (RESUME_MAY_CHANGE.includes(path)) return undefined;
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (isObj(saved) && isObj(now)) {
    for (const k of [...new Set([...Object.keys(saved), ...Object.keys(now)])].sort()) {
      const d = firstDifference(saved[k], now[k], path ? `${path}.${k}` : k);
      if (d) return d;
    }
    return undefined;
  }
  return JSON.stringify(saved) === JSON.stringify(now) ? undefined : { path: path || '(config)', saved, now };
}

function show(v: unknown): string {
  return v === undefined ? 'unset' : JSON.stringify(v);
}
