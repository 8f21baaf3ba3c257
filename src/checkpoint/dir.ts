/**
 * Crash-safe checkpoint directories.
 *
 * A checkpoint is several files (weights, manifest, trainer state) that must change together.
 * We build the new version in a hidden temp sibling directory, fsync it, then swap it into place
 * with renames, so a reader never sees a half-written checkpoint and an error (or a crash before
 * the swap) leaves the previous checkpoint as it was.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { faultPoint } from '../util/fault.js';
import { isProcessAlive, liveLockHolder } from './lock.js';

export interface FileDigest {
  sha256: string;
  bytes: number;
}

/**
 * Create or replace `finalDir` atomically. `fill` writes the contents into the temp dir it is given.
 * On error the temp dir is removed, `finalDir` is left untouched, and the error is re-thrown.
 */
export async function writeDirAtomic(
  finalDir: string,
  fill: (tmpDir: string) => Promise<void> | void,
  o: { expectedBytes?: number } = {},
): Promise<void> {
  const target = resolve(finalDir);
  const parent = dirname(target);
  const name = basename(target);
  try {
    await mkdir(parent, { recursive: true });
    const tmp = join(parent, `.${name}.tmp-${process.pid}-${randomSuffix()}`);
    await mkdir(tmp);
    try {
      await fill(tmp);
      faultPoint('save:fill');
      await fsyncTree(tmp);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
    await swapIntoPlace(tmp, target);
    await fsyncDir(parent); // make the renames themselves durable
    faultPoint('save:done');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOSPC' && code !== 'EDQUOT') throw err;
    const need = o.expectedBytes ?? dirBytes(target);
    const previous = existsSync(target) ? ' (the previous one is intact)' : '';
    throw Object.assign(
      new Error(
        `${finalDir}: no space left on device while saving a checkpoint${previous}; a save needs about ` +
          `${formatBytes(need)} free: the new copy is written beside the old one, so about twice the checkpoint's size in all`,
      ),
      { code, cause: err },
    );
  }
}

/**
 * Move tmp to target. If target exists it is first renamed aside, so that a failure of the second
 * rename can put it back. (A crash between the two renames leaves `.<name>.old-*` behind;
 * `recoverDir` finishes or undoes the swap.)
 */
async function swapIntoPlace(tmp: string, target: string): Promise<void> {
  if (!existsSync(target)) {
    try {
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
    return;
  }
  const old = join(dirname(target), `.${basename(target)}.old-${process.pid}-${randomSuffix()}`);
  try {
    await rename(target, old);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  faultPoint('save:swapped-aside');
  try {
    await rename(tmp, target);
  } catch (err) {
    await rename(old, target); // put the previous version back
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  await rm(old, { recursive: true, force: true });
}

/**
 * Tidy leftovers from interrupted writes in `parent` (every directory name in it); see recoverDir.
 * Returns the paths it removed or restored. Safe to call when `parent` does not exist.
 */
export async function cleanStaleTemps(parent: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(parent);
  } catch {
    return [];
  }
  const targets = new Set(names.map((n) => LEFTOVER.exec(n)?.[1]).filter((n): n is string => n !== undefined));
  return [...targets].flatMap((name) => recoverDir(join(parent, name)));
}

/**
 * The recovery every checkpoint loader and writer runs first: finish or undo what a killed save of
 * `dir` left beside it, and delete the temp dirs of dead processes.
 *  - `dir` missing, `.<name>.old-<pid>-*` present (a crash between the two renames of a swap): if that
 *    process's complete new copy (`.tmp-<pid>-*` with its manifest, written last) is there, finish the
 *    swap; otherwise put the old directory back;
 *  - `.<name>.tmp-*` / `.old-*` of dead processes: deleted.
 * Leftovers of live processes are left alone, and so is everything while another host holds the lock.
 * Returns what it touched; synchronous so loaders can call it.
 */
export function recoverDir(dir: string): string[] {
  const target = resolve(dir);
  const parent = dirname(target);
  const name = basename(target);
  let entries: string[];
  try {
    entries = readdirSync(parent);
  } catch {
    return [];
  }
  const dead = entries
    .map((e) => ({ entry: e, m: LEFTOVER.exec(e) }))
    .filter(({ m }) => m && m[1] === name && !isProcessAlive(Number(m[3])))
    .map(({ entry, m }) => ({ path: join(parent, entry), kind: m![2] as 'tmp' | 'old', pid: m![3]!, mtime: statSync(join(parent, entry), { throwIfNoEntry: false })?.mtimeMs ?? 0 }));
  if (dead.length === 0) return [];
  const holder = liveLockHolder(target);
  if (holder && holder.host !== hostname()) return []; // another host's leftovers may be live
  const touched: string[] = [];
  if (!existsSync(target)) {
    const old = dead.filter((d) => d.kind === 'old').sort((a, b) => b.mtime - a.mtime)[0];
    if (old) {
      const finished = dead.find((d) => d.kind === 'tmp' && d.pid === old.pid && existsSync(join(d.path, 'manifest.json')));
      const restore = finished ?? old;
      try {
        renameSync(restore.path, target);
        touched.push(restore.path);
      } catch (err) {
        // Another loader recovered it first (ENOENT / ENOTEMPTY): what matters is that the target exists.
        if (!existsSync(target)) throw err;
      }
      dead.splice(dead.indexOf(restore), 1);
    }
  }
  for (const d of dead) {
    rmSync(d.path, { recursive: true, force: true });
    touched.push(d.path);
  }
  return touched;
}

const LEFTOVER = /^\.(.+)\.(tmp|old)-(\d+)-[0-9a-f]+$/;

/** Hex SHA-256 of a file. */
export async function sha256File(path: string): Promise<string> {
  return (await fileDigest(path)).sha256;
}

/** Hex SHA-256 and size of a file, streamed so big weight files don't need to fit in memory twice. */
export async function fileDigest(path: string): Promise<FileDigest> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

/** Digest of each listed file (paths relative to `dir`), in the shape the manifest stores. */
export async function hashDir(dir: string, files: string[]): Promise<Record<string, FileDigest>> {
  const out: Record<string, FileDigest> = {};
  for (const f of [...files].sort()) out[f] = await fileDigest(join(dir, f));
  return out;
}

// ---------------------------------------------------------------------------------------------

function randomSuffix(): string {
  return randomBytes(4).toString('hex');
}

/** Total size of the files under `dir` (0 when it does not exist). */
export function dirBytes(dir: string): number {
  let total = 0;
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const full = join(dir, e.name);
      total += e.isDirectory() ? dirBytes(full) : statSync(full).size;
    }
  } catch {
    // missing or unreadable: count nothing
  }
  return total;
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${Math.max(1, Math.ceil(n / 1024))} KiB`;
}

/** fsync every file (and directory) under `dir`, so data hits the disk before the rename publishes it. */
async function fsyncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) await fsyncTree(full);
    else if (entry.isFile()) await fsyncFile(full);
  }
  await fsyncDir(dir);
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Directory fsync persists entries/renames on POSIX; Windows can't open directories, so skip there. */
async function fsyncDir(path: string): Promise<void> {
  if (process.platform === 'win32') return;
  try {
    await fsyncFile(path);
  } catch (err) {
    // Some filesystems reject fsync on directories (EINVAL); the data files are already synced.
    if (!(await stat(path).catch(() => null))) throw err;
  }
}
