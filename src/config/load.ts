/**
 * The one config loader every stage uses:
 *   file (YAML or JSON)  →  `extra` values from CLI flags  →  `--set a.b=c` overrides  →  zod validation.
 *
 * Every failure is a ConfigError whose message is a single line naming the file and the field,
 * e.g. `configs/pretrain.yaml: train.lr: expected number, received string`, so the CLI can print it as is.
 *
 * Schemas must use `z.strictObject` (not `z.object`) at every level: plain objects silently drop
 * unknown keys, and a typo like `lerning_rate` would then be ignored instead of reported.
 *
 * Paths inside configs (data files, output dirs) are NOT rewritten here: like most CLIs they are
 * relative to the current working directory.
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Label used in messages when there is no config file (everything comes from defaults and --set). */
const NO_FILE = '<config>';

export function loadConfig<S extends z.ZodType>(
  schema: S,
  file: string | undefined,
  sets: string[] = [],
  extra: Record<string, unknown> = {},
  /** How to name each `extra` value in errors (dotted path → e.g. '--top-p 1.5'); default: the file. */
  extraLabels: Record<string, string> = {},
): z.infer<S> {
  const source = file ?? NO_FILE;
  const data = file === undefined ? {} : readConfigFile(file);

  const fromSet = new Map<string, string>(); // dotted path → the flag or --set argument that wrote it
  for (const [key, value] of Object.entries(extra)) {
    if (value === undefined) continue; // unset CLI flags arrive as undefined: keep the file's value
    setAt(data, key.split('.'), value, source);
    if (extraLabels[key]) fromSet.set(key, extraLabels[key]);
  }
  for (const s of sets) {
    const [path, value] = parseSetOverride(s);
    setAt(data, path, value, `--set ${s}`);
    fromSet.set(path.join('.'), `--set ${s}`);
  }
  const result = schema.safeParse(data);
  if (result.success) return result.data;
  // Blame the --set argument, not the file, when the bad value came from the command line.
  const issue = firstIssue(result.error.issues);
  const where = [...issue.path, ...(issue.code === 'unrecognized_keys' ? [issue.keys[0]!] : [])].join('.');
  const setArg = [...fromSet].find(([p]) => where === p || where.startsWith(`${p}.`))?.[1];
  throw new ConfigError(`${setArg ?? source}: ${describeIssue(issue, data)}`);
}

/** Validate already-loaded data; throws a one-line ConfigError for the first issue. */
export function validate<S extends z.ZodType>(schema: S, data: unknown, source: string): z.infer<S> {
  const result = schema.safeParse(data);
  if (result.success) return result.data;
  throw new ConfigError(`${source}: ${describeIssue(firstIssue(result.error.issues), data)}`);
}

/**
 * The issue to report. A typo'd key shows up twice, as an unknown key and as a missing one
 * (`bacth_size` / `batch_size`); the unknown key is the user's actual mistake, so it goes first, and
 * names the missing key it most likely meant.
 */
function firstIssue(issues: z.core.$ZodIssue[]): z.core.$ZodIssue {
  const unknown = issues.find((i) => i.code === 'unrecognized_keys');
  if (!unknown || unknown.code !== 'unrecognized_keys') return issues[0]!;
  const parent = unknown.path.join('.');
  const missing = issues
    .filter((i) => i.code === 'invalid_type' && i.path.slice(0, -1).join('.') === parent)
    .map((i) => String(i.path.at(-1)));
  const typo = unknown.keys[0]!;
  const meant = missing.find((m) => editDistance(m, typo) <= 2);
  return meant ? { ...unknown, keys: [typo, ...unknown.keys.slice(1)], message: `did you mean ${meant}?` } : unknown;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * "train.lr=3e-4" → [["train", "lr"], 0.0003]. The value is read as a YAML scalar/flow value, so
 * numbers, booleans, null and [a, b] lists get their types; anything YAML can't parse stays a string.
 * An empty value (`a.b=`) is the empty string.
 */
export function parseSetOverride(s: string): [string[], unknown] {
  const eq = s.indexOf('=');
  if (eq <= 0) throw new ConfigError(`--set ${s}: expected key=value, e.g. train.lr=3e-4`);
  const key = s.slice(0, eq).trim();
  const path = key.split('.');
  if (path.some((p) => p === '')) throw new ConfigError(`--set ${s}: empty segment in key "${key}"`);
  return [path, parseScalar(s.slice(eq + 1))];
}

function parseScalar(raw: string): unknown {
  if (raw.trim() === '') return '';
  try {
    return YAML.parse(raw);
  } catch {
    return raw;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as Error).message}`);
  }
  const value = extname(file).toLowerCase() === '.json' ? parseJson(text, file) : parseYaml(text, file);
  if (value === null || value === undefined) return {}; // empty file = all defaults
  if (!isPlainObject(value)) {
    throw new ConfigError(`${file}: top level must be a mapping of keys to values, got ${typeName(value)}`);
  }
  return value;
}

function parseYaml(text: string, file: string): unknown {
  const doc = YAML.parseDocument(text);
  const err = doc.errors[0];
  if (err) {
    // The library's message is multi-line ("... at line 3, column 5:\n\n<source excerpt>"); keep the first sentence.
    const reason = err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    const line = err.linePos?.[0]?.line;
    throw new ConfigError(`${file}: ${line ? `line ${line}: ` : ''}${reason}`);
  }
  return doc.toJS();
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    // V8 reports a character position ("... in JSON at position 42"); turn it into a line number.
    const msg = (err as Error).message;
    const pos = /at position (\d+)/.exec(msg);
    const reason = msg.replace(/ in JSON at position \d+.*$/, '').replace(/ \(line \d+ column \d+\)$/, '');
    if (!pos) throw new ConfigError(`${file}: ${reason}`);
    const line = text.slice(0, Number(pos[1])).split('\n').length;
    throw new ConfigError(`${file}: line ${line}: ${reason}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------------------------

/** Set data[path] = value, creating intermediate mappings. Plain-object values are merged into existing ones. */
function setAt(data: Record<string, unknown>, path: string[], value: unknown, source: string): void {
  let node = data;
  for (let i = 0; i < path.length - 1; i++) {
    const key = path[i]!;
    if (node[key] === undefined || node[key] === null) node[key] = {};
    const next = node[key];
    if (!isPlainObject(next)) {
      throw new ConfigError(`${source}: ${path.slice(0, i + 1).join('.')}: cannot set a field inside a ${typeName(next)}`);
    }
    node = next;
  }
  const last = path[path.length - 1]!;
  const existing = node[last];
  const copy = structuredClone(value); // later --set edits must not mutate the caller's `extra` objects
  node[last] = isPlainObject(existing) && isPlainObject(copy) ? deepMerge(existing, copy) : copy;
}

function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? deepMerge(b, v) : v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Turning zod issues into one-line messages
// ---------------------------------------------------------------------------------------------

/** "field.path: reason" for one zod issue. `input` is the validated data (used to say what was received). */
export function describeIssue(issue: z.core.$ZodIssue, input: unknown): string {
  let path = issue.path;
  let reason: string;
  switch (issue.code) {
    case 'invalid_type': {
      const received = valueAt(input, path);
      const expected = EXPECTED_NAMES[issue.expected] ?? issue.expected;
      if (received === undefined) reason = `missing required value (expected ${expected})`;
      else if (typeof received === 'number' && issue.expected === 'int') reason = `expected integer, received ${received}`;
      else reason = `expected ${expected}, received ${typeName(received)}`;
      break;
    }
    case 'unrecognized_keys':
      // Point at the offending key itself: "train.lrr: unknown key".
      path = [...path, issue.keys[0]!];
      reason = issue.keys.length > 1 ? `unknown key (also unknown: ${issue.keys.slice(1).join(', ')})` : 'unknown key';
      if (issue.message.startsWith('did you mean')) reason += ` (${issue.message})`;
      break;
    case 'invalid_value': {
      const options = issue.values.map((v) => JSON.stringify(v)).join(' | ');
      const got = JSON.stringify(valueAt(input, path));
      reason = issue.values.length === 1 ? `expected ${options}, received ${got}` : `expected one of ${options}, received ${got}`;
      break;
    }
    case 'too_small':
      reason = issue.origin === 'number' || issue.origin === 'int' || issue.origin === 'bigint'
        ? `must be ${issue.inclusive ? '>=' : '>'} ${issue.minimum}`
        : issue.message;
      break;
    case 'too_big':
      reason = issue.origin === 'number' || issue.origin === 'int' || issue.origin === 'bigint'
        ? `must be ${issue.inclusive ? '<=' : '<'} ${issue.maximum}`
        : issue.message;
      break;
    default:
      reason = issue.message;
  }
  return path.length > 0 ? `${formatPath(path)}: ${reason}` : reason;
}

/** Speak YAML: zod says object/array, config files have mappings/lists. */
const EXPECTED_NAMES: Record<string, string> = { object: 'mapping', array: 'list', int: 'integer' };

/** ["train", "layers", 0, "lr"] → "train.layers[0].lr" */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let node = input;
  for (const p of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<PropertyKey, unknown>)[p];
  }
  return node;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'number' && Number.isNaN(v)) return 'NaN';
  if (Array.isArray(v)) return 'list';
  if (typeof v === 'object') return 'mapping';
  return typeof v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
