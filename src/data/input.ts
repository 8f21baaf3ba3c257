/**
 * Reading user-supplied data files: every failure names the file and says what is wrong with it
 * (missing, a directory, unreadable, empty, binary) instead of a bare EISDIR/EACCES, and a UTF-8 BOM
 * (which editors on Windows add) is not part of the text.
 */
import { accessSync, closeSync, constants, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { InputError } from '../util/errors.js';

/** Refuse what is not text: a directory, an unreadable or empty file, or binary data (NUL bytes, not UTF-8). */
export function checkTextInput(path: string): number {
  let size: number;
  try {
    const st = statSync(path);
    if (st.isDirectory()) throw new Error('is a directory, not a text or JSONL file');
    size = st.size;
    accessSync(path, constants.R_OK);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new InputError(`${path}: ${e.code === 'ENOENT' ? 'input file not found' : e.code === 'EACCES' ? 'cannot read (permission denied)' : e.message}`);
  }
  const head = Buffer.alloc(Math.min(size, 1 << 16));
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  if (!head.toString('utf8').replace(/^\uFEFF/, '').trim()) throw new InputError(`${path}: empty input (no text)`);
  if (head.includes(0)) throw new InputError(`${path}: looks like binary data (NUL bytes); prepare reads UTF-8 text or JSONL`);
  // Invalid UTF-8 decodes to U+FFFD; a few may be a cut multi-byte character at the end of the sample.
  const bad = (head.toString('utf8').match(/\uFFFD/g) ?? []).length;
  if (bad > 4 + head.length / 1000) throw new InputError(`${path}: looks like binary data (${bad} invalid UTF-8 sequences in the first ${head.length} bytes); prepare reads UTF-8 text or JSONL`);
  return size;
}

/** A whole UTF-8 text file, BOM dropped; `what` names it in errors (e.g. "SFT data file"). */
export function readTextFile(path: string, what: string): string {
  try {
    if (statSync(path).isDirectory()) throw new InputError(`${path}: is a directory, not a file (expected the ${what})`);
    return readFileSync(path, 'utf8').replace(/^\uFEFF/, '');
  } catch (err) {
    if (err instanceof InputError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new InputError(`${path}: ${e.code === 'ENOENT' ? `${what} not found` : e.code === 'EACCES' ? `cannot read ${what} (permission denied)` : e.message}`);
  }
}
