/**
 * The JSON files of a checkpoint directory:
 *   manifest.json       what this checkpoint is: stage, resolved config, parent, metrics, versions, file hashes
 *   trainer_state.json  what a resumed run needs besides the weights: step, rng, data position, schedule
 *
 * Both are validated on read, so a hand-edited or truncated file fails with a message naming the file.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { describeIssue } from '../config/load.js';
import { ScheduleSchema } from '../config/schemas.js';
import { hashDir } from './dir.js';

export const MANIFEST_FILE = 'manifest.json';
export const TRAINER_STATE_FILE = 'trainer_state.json';
export const MANIFEST_FORMAT = 'llmctl-checkpoint';
export const MANIFEST_FORMAT_VERSION = 1;

// ---------------------------------------------------------------------------------------------
// Generic JSON helpers
// ---------------------------------------------------------------------------------------------

/** Pretty-printed JSON with a trailing newline (diff- and human-friendly). */
export function writeJson(path: string, obj: unknown): void {
  writeFileSync(path, JSON.stringify(obj, null, 2) + '\n');
}

/** Parse a JSON file; `what` names it in errors, e.g. "<path>: cannot read trainer state: ENOENT…". */
export function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`${path}: cannot read ${what}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: ${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/** readJson + zod validation, with the first issue as a one-line error. */
function readValidated<S extends z.ZodType>(path: string, what: string, schema: S): z.infer<S> {
  const data = readJson(path, what);
  const result = schema.safeParse(data);
  if (!result.success) throw new Error(`${path}: invalid ${what}: ${describeIssue(result.error.issues[0]!, data)}`);
  return result.data;
}

// ---------------------------------------------------------------------------------------------
// manifest.json
// ---------------------------------------------------------------------------------------------

const FileDigestSchema = z.object({ sha256: z.string().regex(/^[0-9a-f]{64}$/), bytes: z.int().nonnegative() });

export const ManifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  format_version: z.literal(MANIFEST_FORMAT_VERSION),
  /** Which command produced it: "pretrain", "finetune", ... */
  stage: z.string().min(1),
  created_at: z.iso.datetime(),
  /** The checkpoint this one started from (path as given, and its manifest's sha256), or null if trained from scratch. */
  parent: z.object({ path: z.string(), sha256: z.string() }).nullable(),
  /** The resolved stage config (after defaults and --set), so the run can be reproduced. */
  config: z.unknown(),
  metrics: z.record(z.string(), z.number()),
  versions: z.object({ llmctl: z.string(), node: z.string(), tfjs: z.string(), backend: z.string() }),
  /** Every other file in the directory, by name relative to it. */
  files: z.record(z.string(), FileDigestSchema),
  /** What the run read, by content (sha256 of data, tokenizer, base manifest): a resume must read the same. */
  inputs: z.record(z.string(), z.string()).optional(),
});

export type Manifest = z.infer<typeof ManifestSchema>;

/** Fields the caller supplies; `createManifest` fills in format, timestamp and file hashes. */
export type ManifestFields = Omit<Manifest, 'format' | 'format_version' | 'created_at' | 'files'>;

/** Build a manifest for `dir`, hashing the listed files (names relative to `dir`). Does not write it. */
export async function createManifest(dir: string, fields: ManifestFields, files: string[]): Promise<Manifest> {
  return {
    format: MANIFEST_FORMAT,
    format_version: MANIFEST_FORMAT_VERSION,
    created_at: new Date().toISOString(),
    ...fields,
    files: await hashDir(dir, files),
  };
}

export function writeManifest(dir: string, manifest: Manifest): void {
  writeJson(join(dir, MANIFEST_FILE), manifest);
}

/** Read and validate `<dir>/manifest.json`. Errors say whether it is missing, not JSON, or malformed. */
export function readManifest(dir: string): Manifest {
  const path = join(dir, MANIFEST_FILE);
  const data = readJson(path, 'checkpoint manifest');
  // Check identity first so "not a checkpoint" / "newer format" beat a generic field error.
  const { format, format_version: version } = (data ?? {}) as Record<string, unknown>;
  if (format !== MANIFEST_FORMAT) {
    throw new Error(`${path}: not an llmctl checkpoint manifest (format is ${JSON.stringify(format)}, expected "${MANIFEST_FORMAT}")`);
  }
  if (version !== MANIFEST_FORMAT_VERSION) {
    throw new Error(`${path}: unsupported format_version ${JSON.stringify(version)} (this llmctl reads ${MANIFEST_FORMAT_VERSION})`);
  }
  return readValidated(path, 'checkpoint manifest', ManifestSchema);
}

/** Re-hash the files listed in the manifest; throws on the first missing or changed file. */
export async function verifyManifestFiles(dir: string, manifest: Manifest): Promise<void> {
  checkManifestFiles(dir, manifest, true);
}

/**
 * Compare the files listed in the manifest with the disk: sizes always (cheap: catches truncation),
 * and with `full` the sha256 of every byte (catches flipped bits). Throws on the first mismatch, naming
 * the file. Synchronous and streamed in 1 MiB chunks, so loaders can call it on big weight files.
 */
export function checkManifestFiles(dir: string, manifest: Manifest, full: boolean): void {
  for (const [name, expected] of Object.entries(manifest.files)) {
    const path = join(dir, name);
    let bytes: number;
    try {
      bytes = statSync(path).size;
    } catch (err) {
      throw new Error(`${path}: listed in ${MANIFEST_FILE} but cannot be read: ${(err as Error).message}`);
    }
    const sha256 = full && bytes === expected.bytes ? sha256FileSync(path) : undefined;
    if (bytes !== expected.bytes || (sha256 !== undefined && sha256 !== expected.sha256)) {
      throw new Error(
        `${path}: does not match ${MANIFEST_FILE} (expected ${expected.bytes} bytes sha256 ${expected.sha256.slice(0, 12)}…, ` +
          `found ${bytes} bytes${sha256 ? ` sha256 ${sha256.slice(0, 12)}…` : ''}): the file is damaged or was changed after saving`,
      );
    }
  }
}

function sha256FileSync(path: string): string {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  const fd = openSync(path, 'r');
  try {
    let n: number;
    while ((n = readSync(fd, buf, 0, buf.length, null)) > 0) hash.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// trainer_state.json
// ---------------------------------------------------------------------------------------------

export const TrainerStateSchema = z.object({
  /** Optimizer steps completed. */
  step: z.int().nonnegative(),
  tokens_seen: z.number().nonnegative(),
  epoch: z.number().nonnegative().optional(),
  /** Serialized RNG state (format owned by the trainer). */
  rng_state: z.union([z.string(), z.array(z.number())]),
  /** Where the data loader should resume (format owned by the data loader). */
  data_cursor: z.unknown().optional(),
  best_val_loss: z.number().optional(),
  /** Training loss of the last step, so a resumed (or already finished) run can report it. */
  last_loss: z.number().optional(),
  /** Learning rate used at the last step. */
  lr: z.number(),
  /** The schedule being followed, so a resume continues the same curve. */
  schedule: z.object({
    kind: ScheduleSchema,
    peak_lr: z.number(),
    min_lr: z.number(),
    warmup_steps: z.int().nonnegative(),
    total_steps: z.int().nonnegative(),
  }),
});

export type TrainerState = z.infer<typeof TrainerStateSchema>;

export function writeTrainerState(dir: string, state: TrainerState): void {
  writeJson(join(dir, TRAINER_STATE_FILE), state);
}

export function readTrainerState(dir: string): TrainerState {
  return readValidated(join(dir, TRAINER_STATE_FILE), 'trainer state', TrainerStateSchema);
}
