/**
 * Reading user-supplied data files: every failure names the file and says what is wrong with it
 * (missing, a directory, unreadable, empty, binary) instead of a bare EISDIR/EACCES, and a UTF-8 BOM
 * (which editors on Windows add) is not part of the text.
 */
import { accessSync, closeSync, constants, createReadStream, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
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

/** A bad JSONL row's reason (a missing or mistyped field); readJsonlRows reports it as `path: line N: reason`. */
export class RowError extends Error {}

/**
 * Every non-blank line of a JSONL file (read as readTextFile does), parsed and handed to `onRow` with its line
 * number. A line that is not JSON, or for which onRow throws a RowError, stops the read with `path: line N: …`,
 * or with skipInvalid is skipped and counted (the first five reasons kept for the log).
 */
export function readJsonlRows(path: string, what: string, onRow: (value: unknown, line: number) => void, o: { skipInvalid?: boolean } = {}): { skipped: number; skippedReasons: string[] } {
  const skippedReasons: string[] = [];
  let skipped = 0;
  readTextFile(path, what).split('\n').forEach((raw, i) => {
    const line = i + 1;
    if (!raw.trim()) return;
    try {
      let value: unknown;
      try {
        value = JSON.parse(raw);
      } catch (err) {
        throw new RowError(`not valid JSON (${(err as Error).message})`);
      }
      onRow(value, line);
    } catch (err) {
      if (!(err instanceof RowError)) throw err;
      const msg = `${path}: line ${line}: ${err.message}`;
      if (!o.skipInvalid) throw new Error(`${msg} (set data.skip_invalid: true to skip bad rows)`);
      skipped += 1;
      if (skippedReasons.length < 5) skippedReasons.push(msg);
    }
  });
  return { skipped, skippedReasons };
}

/**
 * The rows of a JSONL file as a stream (files bigger than memory: prepare, clean): each non-blank line parsed,
 * with its line number and its byte range in the file (a BOM counts in the first line's). A line that is not
 * JSON stops the read with `path: line N: not valid JSON (…)`.
 */
export async function* streamJsonlRows(path: string): AsyncGenerator<{ value: unknown; line: number; startByte: number; endByte: number }> {
  let line = 0, bytes = 0;
  const rl = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity });
  for await (let raw of rl) {
    line += 1;
    const startByte = bytes;
    bytes += Buffer.byteLength(raw) + 1;
    if (line === 1) raw = raw.replace(/^\uFEFF/, '');
    if (!raw.trim()) continue;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      throw new Error(`${path}: line ${line}: not valid JSON (${(err as Error).message})`);
    }
    yield { value, line, startByte, endByte: bytes };
  }
}
