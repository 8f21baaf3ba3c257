/**
 * The one load-time check of a checkpoint directory, run by every loader (loadCheckpoint,
 * loadTrainerState, loadAdapter):
 *   1. recovery: finish or undo a save that a crash interrupted, delete dead processes' temp dirs;
 *   2. integrity: every file manifest.json lists has its recorded size, and (unless turned off with
 *      --no-verify) its recorded sha256;
 *   3. values: weights and optimizer moments are finite (assertFinite, called as tensors are read).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { log } from '../util/log.js';
import { recoverDir } from './dir.js';
import { MANIFEST_FILE, checkManifestFiles, readManifest } from './manifest.js';

let fullHashes = true;

/** `--no-verify`: check sizes only, not sha256 (faster loads of big checkpoints). */
export function setVerifyHashes(on: boolean): void {
  fullHashes = on;
}

/** Recover and verify `dir` before reading it (a directory without manifest.json is only recovered). */
export function prepareToLoad(dir: string): void {
  const touched = recoverDir(dir);
  if (touched.length) log().warn({ dir, recovered: touched }, 'recovered leftovers of an interrupted checkpoint save');
  const manifestPath = join(dir, MANIFEST_FILE);
  if (!existsSync(manifestPath)) return;
  // Loading a checkpoint reads it in parts (weights, then trainer state): hash each version once. The
  // key holds every listed file's size and mtime, so a file changed since is checked again.
  const manifest = readManifest(dir);
  const stamps = Object.keys(manifest.files).map((f) => {
    const st = statSync(join(dir, f), { throwIfNoEntry: false });
    return st ? `${st.size}:${st.mtimeMs}` : 'missing';
  });
  const key = [resolve(dir), createHash('sha256').update(readFileSync(manifestPath)).digest('hex'), ...stamps].join('\0');
  if (fullHashes && verified.has(key)) return;
  checkManifestFiles(dir, manifest, fullHashes);
  if (fullHashes) verified.add(key);
}

const verified = new Set<string>();

/** Refuse NaN / ±Inf values: a checkpoint holding them would only generate garbage and poison fine-tunes. */
export function assertFinite(where: string, name: string, data: ArrayLike<number>): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      throw new NonFiniteWeightsError(`${where}: tensor '${name}' holds a non-finite value (${data[i]} at index ${i}); refusing to use it`);
    }
  }
}

export class NonFiniteWeightsError extends Error {
  override name = 'NonFiniteWeightsError';
}
