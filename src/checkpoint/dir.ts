/**
 * Crash-safe checkpoint directories.
 *
 * A checkpoint is several files (weights, manifest, trainer state) that must change together.
 * We build the new version in a hidden temp sibling directory, fsync it, then swap it into place
 * with renames, so a reader never sees a half-written checkpoint and an error (or a crash before
 * the swap) leaves the previous checkpoint as it was.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

export interface FileDigest {
  sha256: string;
  bytes: number;
}

/**
 * Create or replace `finalDir` atomically. `fill` writes the contents into the temp dir it is given.
 * On error the temp dir is removed, `finalDir` is left untouched, and the error is re-thrown.
 */
export async function writeDirAtomic(finalDir: string, fill: (tmpDir: string) => Promise<void> | void): Promise<void> {
  const target = resolve(finalDir);
  const parent = dirname(target);
  const name = basename(target);
  await mkdir(parent, { recursive: true });

  const tmp = join(parent, `.${name}.tmp-${process.pid}-${randomSuffix()}`);
  await mkdir(tmp);
  try {
    await fill(tmp);
    await fsyncTree(tmp);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  await swapIntoPlace(tmp, target);
  await fsyncDir(parent); // make the renames themselves durable
}

/**
 * Move tmp to target. If target exists it is first renamed aside, so that a failure of the second
 * rename can put it back. (A crash between the two renames leaves `.<name>.old-*` behind;
 * `cleanStaleTemps` restores it.)
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
 * Tidy leftovers from interrupted writes in `parent`:
 *  - `.<name>.tmp-<pid>-*` whose process is gone → deleted (never finished, never visible)
 *  - `.<name>.old-<pid>-*` whose process is gone → restored to `<name>` if that is missing
 *    (crash between the two renames), otherwise deleted.
 * Returns the paths it removed or restored. Safe to call when `parent` does not exist.
 */
export async function cleanStaleTemps(parent: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(parent);
  } catch {
    return [];
  }
  const touched: string[] = [];
  for (const entry of names) {
    const m = /^\.(.+)\.(tmp|old)-(\d+)-[0-9a-f]+$/.exec(entry);
    if (!m || isProcessAlive(Number(m[3]))) continue;
    const full = join(parent, entry);
    const original = join(parent, m[1]!);
    if (m[2] === 'old' && !existsSync(original)) {
      await rename(full, original);
    } else {
      await rm(full, { recursive: true, force: true });
    }
    touched.push(full);
  }
  return touched;
}

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

function isProcessAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0); // signal 0 = existence check only
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists but not ours
  }
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
