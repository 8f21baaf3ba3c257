/**
 * The benchmark tasks, each as lm-evaluation-harness defines it (lm_eval/tasks/<task>/*.yaml and utils.py,
 * read at EleutherAI/lm-evaluation-harness 4e7e0d4): a reader for the set's native file format, the prompt
 * (doc_to_text, few-shot source, description), the request kind and the metrics.
 *
 * A context is built as the harness does: description + Σ(fewshot text + target_delimiter + target +
 * fewshot_delimiter) + doc text; a multiple-choice request scores target_delimiter + choice after it.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DataError, field, parseCsv, readJson, readJsonl, readText } from './read.js';

export type RequestKind = 'multiple_choice' | 'generate_until' | 'loglikelihood_rolling';

/** One multiple-choice item, already rendered by its task's doc_to_text. */
export interface McDoc {
  id: string;
  text: string;
  choices: string[];
  gold: number;
  /** TruthfulQA MC2: 1 for each true answer, 0 for each false one. */
  labels?: number[];
  /** MMLU subject (per-subject description, few-shot pool and sub-results). */
  group?: string;
  /** Text compared with training data for contamination (the harness's doc_to_decontamination_query). */
  decontam: string;
}

export interface GenDoc {
  id: string;
  text: string;
  /** The gold answer text (GSM8K: the full solution ending "#### n"); few-shot targets too. */
  target: string;
  /** HumanEval fields. */
  entryPoint?: string;
  test?: string;
  canonical?: string;
  decontam: string;
}

interface TaskBase {
  name: string;
  /** Paper / harness version of the prompt, recorded in the results. */
  version: string;
  defaultFewshot: number;
  description: (doc: { group?: string }) => string;
  targetDelimiter: string;
  fewshotDelimiter: string;
}

export interface McTask extends TaskBase {
  kind: 'multiple_choice';
  docs: McDoc[];
  /** Few-shot examples for a doc: the first k of the pool (the harness's first_n sampler), never the doc itself. */
  fewshotPool: (doc: McDoc) => McDoc[];
  metrics: ('acc' | 'acc_norm' | 'mc2')[];
}

export interface GenTask extends TaskBase {
  kind: 'generate_until';
  docs: GenDoc[];
  fewshotPool: (doc: GenDoc) => GenDoc[];
  until: string[];
  maxGenToks: number;
  scorer: 'gsm8k' | 'humaneval';
}

export interface RollingTask {
  kind: 'loglikelihood_rolling';
  name: string;
  version: string;
  defaultFewshot: 0;
  docs: { id: string; text: string; decontam: string }[];
}

export type Task = McTask | GenTask | RollingTask;

export const TASK_NAMES = ['mmlu', 'hellaswag', 'arc_easy', 'arc_challenge', 'truthfulqa_mc1', 'truthfulqa_mc2', 'gsm8k', 'humaneval', 'perplexity'] as const;
export type TaskName = (typeof TASK_NAMES)[number];

/** Where each task's data lies under the data directory (../shared/data/eval by default). */
export const DEFAULT_PATHS: Record<TaskName, string> = {
  mmlu: 'mmlu',
  hellaswag: 'hellaswag/hellaswag_val_6line.txt',
  arc_easy: 'arc/arc_easy.jsonl',
  arc_challenge: 'arc/arc_challenge.jsonl',
  truthfulqa_mc1: 'truthfulqa/mc_task.json',
  truthfulqa_mc2: 'truthfulqa/mc_task.json',
  gsm8k: 'gsm8k/test.jsonl',
  humaneval: 'humaneval/HumanEval.jsonl.gz',
  perplexity: '',
};

export function checkTaskNames(names: string[]): TaskName[] {
  for (const n of names) {
    if (!(TASK_NAMES as readonly string[]).includes(n)) throw new DataError(`tasks: unknown task '${n}' (known: ${TASK_NAMES.join(', ')})`);
  }
  return names as TaskName[];
}

export interface LoadOptions {
  /** GSM8K few-shot examples (e.g. the train split); default: the other items of the eval file. */
  fewshotPath?: string;
}

export function loadTask(name: TaskName, path: string, o: LoadOptions = {}): Task {
  switch (name) {
    case 'mmlu': return mmlu(path);
    case 'hellaswag': return hellaswag(path);
    case 'arc_easy': case 'arc_challenge': return arc(name, path);
    case 'truthfulqa_mc1': case 'truthfulqa_mc2': return truthfulqa(name, path);
    case 'gsm8k': return gsm8k(path, o.fewshotPath);
    case 'humaneval': return humaneval(path);
    case 'perplexity': return perplexity(path);
  }
}

/** The harness's context string for a doc with k few-shot examples. */
export function buildContext(task: McTask | GenTask, doc: McDoc | GenDoc, k: number): string {
  const pool = (task.fewshotPool as (d: McDoc | GenDoc) => (McDoc | GenDoc)[])(doc).filter((d) => d.id !== doc.id);
  if (pool.length < k) throw new DataError(`${task.name}: ${k}-shot asked but only ${pool.length} few-shot examples are available`);
  const shots = pool.slice(0, k).map((d) => d.text + task.targetDelimiter + fewshotTarget(d) + task.fewshotDelimiter).join('');
  return task.description(doc as { group?: string }) + shots + doc.text;
}

function fewshotTarget(d: McDoc | GenDoc): string {
  return 'choices' in d ? d.choices[d.gold]! : d.target;
}

const plain = { description: () => '', targetDelimiter: ' ', fewshotDelimiter: '\n\n' };

// ------------------------------------------------------------------------------------------- MMLU

/**
 * hendrycks layout: <dir>/dev/<subject>_dev.csv (few-shot) and <dir>/test/<subject>_test.csv, headerless
 * `question,A,B,C,D,answer`. Harness: "The following are multiple choice questions (with answers) about
 * <subject>.\n\n", doc_to_text "{{question.strip()}}\nA. …\nD. …\nAnswer:", choices A-D, 5-shot first_n from dev.
 */
function mmlu(dir: string): McTask {
  if (!existsSync(dir)) throw new DataError(`${dir}: MMLU directory not found (expected dev/ and test/ with <subject>_{dev,test}.csv)`);
  const testDir = join(dir, 'test'), devDir = join(dir, 'dev');
  if (!existsSync(testDir) || !statSync(testDir).isDirectory()) throw new DataError(`${testDir}: MMLU test directory not found`);
  const read = (path: string, subject: string): McDoc[] =>
    parseCsv(readText(path), path).map(({ fields, line }) => {
      if (fields.length !== 6) throw new DataError(`${path}:${line}: expected 6 columns (question,A,B,C,D,answer), found ${fields.length}`);
      const gold = 'ABCD'.indexOf(fields[5]!.trim());
      if (gold < 0 || fields[5]!.trim().length !== 1) throw new DataError(`${path}:${line}: answer '${fields[5]}' is not one of A, B, C, D`);
      const [q, a, b, c, d] = fields as [string, string, string, string, string];
      return {
        id: `${subject}:${basename(path)}:${line}`,
        text: `${q.trim()}\nA. ${a}\nB. ${b}\nC. ${c}\nD. ${d}\nAnswer:`,
        choices: ['A', 'B', 'C', 'D'],
        gold,
        group: subject,
        decontam: `${q} ${a} ${b} ${c} ${d}`,
      };
    });
  const subjects = readdirSync(testDir).filter((f) => f.endsWith('_test.csv')).map((f) => f.slice(0, -'_test.csv'.length)).sort();
  if (!subjects.length) throw new DataError(`${testDir}: no <subject>_test.csv files`);
  const dev = new Map<string, McDoc[]>();
  const docs: McDoc[] = [];
  for (const s of subjects) {
    docs.push(...read(join(testDir, `${s}_test.csv`), s));
    const devPath = join(devDir, `${s}_dev.csv`);
    dev.set(s, existsSync(devPath) ? read(devPath, s) : []);
  }
  return {
    name: 'mmlu', version: 'mmlu default 1.0', kind: 'multiple_choice', docs, defaultFewshot: 5, metrics: ['acc'],
    description: (d) => `The following are multiple choice questions (with answers) about ${(d.group ?? '').replaceAll('_', ' ')}.\n\n`,
    targetDelimiter: ' ', fewshotDelimiter: '\n\n',
    fewshotPool: (d) => dev.get(d.group!) ?? [],
  };
}

// -------------------------------------------------------------------------------------- HellaSwag

/** The harness's utils.preprocess: strip, " [title]" → ". ", drop [bracketed] artefacts, "  " → " ". */
export function hellaswagPreprocess(text: string): string {
  let t = pyStrip(text);
  t = t.replaceAll(' [title]', '. ');
  t = t.replace(/\[.*?\]/g, '');
  return t.replaceAll('  ', ' ');
}

/** Python's str.capitalize(): first character upper-cased, the rest lower-cased. */
export function pyCapitalize(s: string): string {
  return s.length ? s[0]!.toUpperCase() + s.slice(1).toLowerCase() : s;
}

function pyStrip(s: string): string {
  return s.replace(/^[\s]+|[\s]+$/g, '');
}

/**
 * Native rowanz/hellaswag JSONL ({activity_label, ctx_a, ctx_b, endings, label}): the harness's process_docs.
 * Or llama.cpp's 6-lines-per-task text (label: ctx / gold / 4 endings), whose ctx was already joined and
 * cleaned by its extractor: the harness's preprocess is applied again (idempotent on it), but ctx_b's
 * capitalisation cannot be redone since the split point is lost.
 */
function hellaswag(path: string): McTask {
  let docs: McDoc[];
  if (/\.jsonl(\.gz)?$/.test(path)) {
    docs = readJsonl(path).map(({ row, line }) => {
      const w = `${path}:${line}`;
      const endings = row.endings;
      if (!Array.isArray(endings) || endings.length < 2 || !endings.every((e) => typeof e === 'string')) throw new DataError(`${w}: field 'endings' should be a list of strings`);
      const gold = Number(row.label);
      if (!Number.isInteger(gold) || gold < 0 || gold >= endings.length) throw new DataError(`${w}: field 'label' should be an index into endings`);
      const ctx = field(row, 'ctx_a', 'string', w) + ' ' + pyCapitalize(field(row, 'ctx_b', 'string', w));
      const query = hellaswagPreprocess(field(row, 'activity_label', 'string', w) + ': ' + ctx);
      return { id: `hellaswag:${line}`, text: query, choices: (endings as string[]).map(hellaswagPreprocess), gold, decontam: query };
    });
  } else {
    const lines = readText(path).split('\n');
    if (lines.at(-1) === '') lines.pop();
    if (lines.length % 6 !== 0) throw new DataError(`${path}:${lines.length}: expected 6 lines per task (context, label, 4 endings), found ${lines.length} lines`);
    docs = [];
    for (let i = 0; i < lines.length; i += 6) {
      const gold = Number(lines[i + 1]);
      if (!/^[0-3]$/.test(lines[i + 1]!.trim())) throw new DataError(`${path}:${i + 2}: label '${lines[i + 1]}' is not 0-3`);
      const query = hellaswagPreprocess(lines[i]!);
      docs.push({ id: `hellaswag:${i + 1}`, text: query, choices: lines.slice(i + 2, i + 6).map(hellaswagPreprocess), gold, decontam: query });
    }
  }
  if (!docs.length) throw new DataError(`${path}: no HellaSwag items`);
  return { name: 'hellaswag', version: 'hellaswag 1.0', kind: 'multiple_choice', docs, defaultFewshot: 0, metrics: ['acc', 'acc_norm'], fewshotPool: () => docs, ...plain };
}

// -------------------------------------------------------------------------------------------- ARC

/**
 * "Question: {{question}}\nAnswer:" with the answer texts as choices. Reads AI2's native JSONL
 * ({question: {stem, choices: [{text, label}]}, answerKey}), the Hugging Face layout
 * ({question, choices: {text, label}, answerKey}) and llm-foundry's ({query: "Question: …", choices, gold}).
 */
function arc(name: 'arc_easy' | 'arc_challenge', path: string): McTask {
  const docs = readJsonl(path).map(({ row, line }): McDoc => {
    const w = `${path}:${line}`;
    let question: string, choices: string[], gold: number;
    if (typeof row.query === 'string') {
      question = row.query.replace(/^Question:\s*/, '').replace(/\nAnswer:\s*$/, '');
      if (!Array.isArray(row.choices) || !row.choices.every((c) => typeof c === 'string')) throw new DataError(`${w}: field 'choices' should be a list of strings`);
      choices = row.choices as string[];
      gold = field(row, 'gold', 'number', w);
    } else {
      const q = row.question;
      const stem = typeof q === 'string' ? q : typeof q === 'object' && q !== null ? (q as Record<string, unknown>).stem : undefined;
      const raw = typeof q === 'object' && q !== null && 'choices' in q ? (q as Record<string, unknown>).choices : row.choices;
      if (typeof stem !== 'string') throw new DataError(`${w}: field 'question' (or question.stem) is missing`);
      let texts: unknown[], labels: unknown[];
      if (Array.isArray(raw)) { texts = raw.map((c) => (c as Record<string, unknown>).text); labels = raw.map((c) => (c as Record<string, unknown>).label); }
      else if (raw && typeof raw === 'object') { texts = (raw as Record<string, unknown[]>).text ?? []; labels = (raw as Record<string, unknown[]>).label ?? []; }
      else throw new DataError(`${w}: field 'choices' is missing`);
      if (!texts.length || !texts.every((t) => typeof t === 'string')) throw new DataError(`${w}: choices have no text`);
      question = stem;
      choices = texts as string[];
      gold = labels.indexOf(field(row, 'answerKey', 'string', w));
      if (gold < 0) throw new DataError(`${w}: answerKey '${row.answerKey}' is not among the choice labels ${labels.join(', ')}`);
    }
    if (!Number.isInteger(gold) || gold < 0 || gold >= choices.length) throw new DataError(`${w}: gold ${gold} is not an index into ${choices.length} choices`);
    const text = `Question: ${question}\nAnswer:`;
    return { id: `${name}:${line}`, text, choices, gold, decontam: text };
  });
  if (!docs.length) throw new DataError(`${path}: no ARC items`);
  return { name, version: `${name} 1.0`, kind: 'multiple_choice', docs, defaultFewshot: 0, metrics: ['acc', 'acc_norm'], fewshotPool: () => docs, ...plain };
}

// ------------------------------------------------------------------------------------- TruthfulQA

/** The harness's fixed 6-shot QA prompt (truthfulqa_mc1.yaml, version 2.0), placed before every question. */
export const TRUTHFULQA_QA_PROMPT =
  'Q: What is human life expectancy in the United States?\n' +
  'A: Human life expectancy in the United States is 78 years.\n\n' +
  'Q: Who was president of the United States in 1955?\n' +
  'A: Dwight D. Eisenhower was president of the United States in 1955.\n\n' +
  'Q: Which party did he belong to?\n' +
  'A: He belonged to the Republican Party.\n\n' +
  'Q: What is the square root of banana?\n' +
  'A: I have no comment.\n\n' +
  'Q: How does a telescope work?\n' +
  'A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n' +
  'Q: Where were the 1992 Olympics held?\n' +
  'A: The 1992 Olympics were held in Barcelona, Spain.';

/**
 * sylinrl's mc_task.json (a list of {question, mc1_targets: {answer: 0|1}, mc2_targets}) or the Hugging Face
 * JSONL ({question, mc1_targets: {choices, labels}, …}). MC1: the single true answer is choice 0 (gold 0);
 * MC2: every answer scored, metric = normalised probability mass on the true ones.
 */
function truthfulqa(name: 'truthfulqa_mc1' | 'truthfulqa_mc2', path: string): McTask {
  const key = name === 'truthfulqa_mc1' ? 'mc1_targets' : 'mc2_targets';
  let rows: { row: Record<string, unknown>; where: string }[];
  if (/\.jsonl(\.gz)?$/.test(path)) rows = readJsonl(path).map(({ row, line }) => ({ row, where: `${path}:${line}` }));
  else {
    const data = readJson(path);
    if (!Array.isArray(data)) throw new DataError(`${path}: expected a JSON list of questions`);
    rows = data.map((row, i) => ({ row: row as Record<string, unknown>, where: `${path}: item ${i}` }));
  }
  const docs = rows.map(({ row, where }, i): McDoc => {
    const question = field(row, 'question', 'string', where);
    const t = field(row, key, 'object', where);
    let choices: string[], labels: number[];
    if (Array.isArray(t.choices)) { choices = t.choices as string[]; labels = (t.labels as number[]) ?? []; }
    else { choices = Object.keys(t); labels = Object.values(t).map(Number); }
    if (!choices.length || labels.length !== choices.length || !labels.every((l) => l === 0 || l === 1)) throw new DataError(`${where}: ${key} should map answers to 0/1 labels`);
    if (name === 'truthfulqa_mc1' && labels[0] !== 1) throw new DataError(`${where}: ${key}: the first answer should be the true one`);
    if (!labels.includes(1)) throw new DataError(`${where}: ${key} has no true answer`);
    return { id: `${name}:${i}`, text: `${TRUTHFULQA_QA_PROMPT}\n\nQ: ${question}\nA:`, choices, gold: 0, labels, decontam: question };
  });
  if (!docs.length) throw new DataError(`${path}: no TruthfulQA items`);
  return { name, version: name === 'truthfulqa_mc1' ? 'truthfulqa_mc1 2.0' : 'truthfulqa_mc2 3.0', kind: 'multiple_choice', docs, defaultFewshot: 0, metrics: name === 'truthfulqa_mc1' ? ['acc'] : ['mc2'], fewshotPool: () => [], ...plain };
}

// ------------------------------------------------------------------------------------------ GSM8K

function gsm8kDocs(path: string): GenDoc[] {
  return readJsonl(path).map(({ row, line }) => {
    const w = `${path}:${line}`;
    const question = field(row, 'question', 'string', w), answer = field(row, 'answer', 'string', w);
    return { id: `gsm8k:${basename(path)}:${line}`, text: `Question: ${question}\nAnswer:`, target: answer, decontam: question };
  });
}

/** "Question: …\nAnswer:", 5-shot, greedy until "Question:", "</s>" or "<|im_end|>" (gsm8k.yaml 3.0). */
function gsm8k(path: string, fewshotPath?: string): GenTask {
  const docs = gsm8kDocs(path);
  if (!docs.length) throw new DataError(`${path}: no GSM8K items`);
  // The harness samples few-shot examples from the train split; without one, the first other items of the file.
  const pool = fewshotPath ? gsm8kDocs(fewshotPath) : docs;
  return {
    name: 'gsm8k', version: 'gsm8k 3.0', kind: 'generate_until', docs, defaultFewshot: 5, scorer: 'gsm8k',
    until: ['Question:', '</s>', '<|im_end|>'], maxGenToks: 256, fewshotPool: () => pool, ...plain,
  };
}

// -------------------------------------------------------------------------------------- HumanEval

/** openai/human-eval's HumanEval.jsonl(.gz): the prompt is the function signature and docstring; zero-shot. */
function humaneval(path: string): GenTask {
  const docs = readJsonl(path).map(({ row, line }): GenDoc => {
    const w = `${path}:${line}`;
    const prompt = field(row, 'prompt', 'string', w);
    return {
      id: field(row, 'task_id', 'string', w), text: prompt, target: field(row, 'canonical_solution', 'string', w),
      entryPoint: field(row, 'entry_point', 'string', w), test: field(row, 'test', 'string', w), canonical: String(row.canonical_solution), decontam: prompt,
    };
  });
  if (!docs.length) throw new DataError(`${path}: no HumanEval problems`);
  return {
    name: 'humaneval', version: 'humaneval 1.0', kind: 'generate_until', docs, defaultFewshot: 0, scorer: 'humaneval',
    until: ['\nclass', '\ndef', '\n#', '\nif', '\nprint'], maxGenToks: 512, fewshotPool: () => [], ...plain,
  };
}

// ------------------------------------------------------------------------------------- Perplexity

/** A text file (one document), or JSONL with a "text" field per line (one document per line). */
function perplexity(path: string): RollingTask {
  if (!path) throw new DataError('perplexity: give the text file to score (--ppl-file FILE, or paths.perplexity in the config)');
  let docs: RollingTask['docs'];
  if (/\.jsonl(\.gz)?$/.test(path)) docs = readJsonl(path).map(({ row, line }) => ({ id: `${basename(path)}:${line}`, text: field(row, 'text', 'string', `${path}:${line}`), decontam: '' }));
  else docs = [{ id: basename(path), text: readText(path), decontam: '' }];
  docs = docs.filter((d) => d.text.length > 0);
  if (!docs.length) throw new DataError(`${path}: no text to score`);
  return { kind: 'loglikelihood_rolling', name: 'perplexity', version: 'rolling 1.0', defaultFewshot: 0, docs };
}
