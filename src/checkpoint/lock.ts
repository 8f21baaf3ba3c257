/**
 * One writer per output directory. A run takes `.<name>.lock` beside the directory (not inside it: the
 * directory itself is replaced by every atomic save) holding its pid, host and start time. A second run
 * fails at once naming the holder. A lock is stale, and is taken over, when its process is gone: same
 * host and the pid is dead, or the pid now belongs to a process started after the lock was written
 * (pid reuse, checked through /proc on Linux). A lock from another host is never judged: the message
 * says how to remove it by hand.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { InputError } from '../util/errors.js';

export interface LockInfo {
  pid: number;
  host: string;
  started_at: string;
  command: string;
}

export function lockPath(dir: string): string {
  const target = resolve(dir);
  return join(dirname(target), `.${basename(target)}.lock`);
}

/** Our locks, by path: re-entrant within the process, and removed when it exits. */
const held = new Set<string>();
process.on('exit', () => {
  for (const p of held) releaseSync(p);
});

/** Take the lock of `dir` (creating its parent). Throws InputError when a live process holds it. */
export function acquireLock(dir: string): void {
  const path = lockPath(dir);
  if (held.has(path)) return;
  mkdirSync(dirname(path), { recursive: true });
  const mine: LockInfo = { pid: process.pid, host: hostname(), started_at: new Date().toISOString(), command: process.argv.slice(2).join(' ') };
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx'); // O_EXCL: exactly one process creates it
      try {
        writeSync(fd, JSON.stringify(mine) + '\n');
      } finally {
        closeSync(fd);
      }
      held.add(path);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = readLock(path);
    if (holder && !isStale(holder)) {
      throw new InputError(
        `${dir}: in use by another run (pid ${holder.pid} on ${holder.host}, since ${holder.started_at}: llmctl ${holder.command}); ` +
          `wait for it to finish, or delete ${path} if that run is gone`,
      );
    }
    releaseSync(path); // stale (or unreadable: its writer died mid-write): take it over
  }
  throw new InputError(`${dir}: could not take the lock ${path} (another run keeps re-creating it)`);
}

export function releaseLock(dir: string): void {
  const path = lockPath(dir);
  if (held.delete(path)) releaseSync(path);
}

/** Who holds the lock of `dir` now (undefined when nobody, or when the holder is gone). */
export function liveLockHolder(dir: string): LockInfo | undefined {
  const path = lockPath(dir);
  if (!existsSync(path)) return undefined;
  const info = readLock(path);
  return info && !isStale(info) ? info : undefined;
}

export function readLock(path: string): LockInfo | undefined {
  try {
    const info = JSON.parse(readFileSync(path, 'utf8')) as LockInfo;
    return typeof info.pid === 'number' && typeof info.host === 'string' ? info : undefined;
  } catch {
    return undefined;
  }
}

function isStale(info: LockInfo): boolean {
  if (info.host !== hostname()) return false; // can't see another host's processes
  if (!isProcessAlive(info.pid)) return true;
  const started = processStartTime(info.pid);
  // A live pid that started (well) after the lock was written is a different process.
  return started !== undefined && started > Date.parse(info.started_at) + 2000;
}

function releaseSync(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

export function isProcessAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0); // signal 0 = existence check only
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists but not ours
  }
}

/** Start time (ms since epoch) of a process, from /proc on Linux; undefined elsewhere. */
function processStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]); // field 22: starttime
    const btime = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))![1]);
    return (btime + ticks / 100) * 1000; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}
