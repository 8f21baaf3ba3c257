/**
 * Readers for the native file formats of the eval sets: JSONL (optionally .gz), JSON, headerless CSV (MMLU),
 * and plain text. Every error names the file and, where there is one, the line: "path:12: reason".
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';

export class DataError extends Error {}

export function readText(path: string): string {
  if (!existsSync(path)) throw new DataError(`${path}: data file not found`);
  if (statSync(path).isDirectory()) throw new DataError(`${path}: expected a file, found a directory`);
  const raw = readFileSync(path);
  return (path.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8');
}

/** One parsed object per non-empty line, with its 1-based line number. */
export function readJsonl(path: string): { row: Record<string, unknown>; line: number }[] {
  const out: { row: Record<string, unknown>; line: number }[] = [];
  readText(path).split('\n').forEach((text, i) => {
    if (!text.trim()) return;
    let row: unknown;
    try {
      row = JSON.parse(text);
    } catch (err) {
      throw new DataError(`${path}:${i + 1}: not valid JSON (${(err as Error).message})`);
    }
    if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new DataError(`${path}:${i + 1}: expected a JSON object`);
    out.push({ row: row as Record<string, unknown>, line: i + 1 });
  });
  return out;
}

export function readJson(path: string): unknown {
  try {
    return JSON.parse(readText(path));
  } catch (err) {
    if (err instanceof DataError) throw err;
    throw new DataError(`${path}: not valid JSON (${(err as Error).message})`);
  }
}

/** RFC 4180 CSV (quoted fields, "" escapes, newlines inside quotes). Records carry their first line number. */
export function parseCsv(text: string, path: string): { fields: string[]; line: number }[] {
  const records: { fields: string[]; line: number }[] = [];
  let fields: string[] = [], field = '', quoted = false, line = 1, start = 1, i = 0;
  const endRecord = () => {
    fields.push(field);
    if (!(fields.length === 1 && fields[0] === '')) records.push({ fields, line: start });
    fields = [];
    field = '';
  };
  while (i < text.length) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 2; continue; }
      if (c === '"') { quoted = false; i++; continue; }
      if (c === '\n') line++;
      field += c;
      i++;
      continue;
    }
    if (c === '"' && field === '') { quoted = true; i++; continue; }
    if (c === ',') { fields.push(field); field = ''; i++; continue; }
    if (c === '\r' && text[i + 1] === '\n') { i++; continue; }
    if (c === '\n') { endRecord(); line++; start = line; i++; continue; }
    field += c;
    i++;
  }
  if (quoted) throw new DataError(`${path}:${start}: unterminated quoted field`);
  if (field !== '' || fields.length) endRecord();
  return records;
}

/** Field access with a file:line error when the field is missing or has the wrong type. */
export function field<T extends 'string' | 'number' | 'object'>(row: Record<string, unknown>, key: string, type: T, where: string):
  T extends 'string' ? string : T extends 'number' ? number : Record<string, unknown> {
  const v = row[key];
  if (typeof v !== type || v === null) throw new DataError(`${where}: field '${key}' ${v === undefined ? 'is missing' : `should be a ${type}`}`);
  return v as never;
}
