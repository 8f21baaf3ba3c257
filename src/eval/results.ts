/**
 * Results in lm-evaluation-harness's JSON shape (results / group_subtasks / configs / versions / n-shot /
 * higher-is-better / n-samples / config), plus what makes two runs comparable: the checkpoint's manifest
 * hash and each task's prompt hash. Also the summary table and the --log-samples JSONL files.
 */
import Table from 'cli-table3';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { EvalRun, TaskOutcome } from './runner.js';

export interface RunInfo {
  checkpoint: string;
  adapter?: string;
  manifestSha256: string | null;
  batchSize: number;
  limit?: number;
  numFewshot?: number;
  shareContext: boolean;
  seconds: number;
  versions: Record<string, string>;
  contaminationFiles?: string[];
}

export function resultsJson(run: EvalRun, info: RunInfo): Record<string, unknown> {
  const all: TaskOutcome[] = run.tasks.flatMap((t) => [t, ...(t.subtasks ?? [])]);
  const results: Record<string, unknown> = {}, configs: Record<string, unknown> = {}, versions: Record<string, string> = {};
  const nShot: Record<string, number> = {}, hib: Record<string, unknown> = {}, nSamples: Record<string, unknown> = {}, promptHash: Record<string, string> = {};
  const groupSubtasks: Record<string, string[]> = {}, contamination: Record<string, unknown> = {}, skipped: Record<string, string> = {};
  for (const t of all) {
    results[t.name] = { alias: t.name, ...t.metrics };
    versions[t.name] = t.version;
    nShot[t.name] = t.numFewshot;
    hib[t.name] = t.higherIsBetter;
    nSamples[t.name] = { original: t.nOriginal, effective: t.nEffective };
    promptHash[t.name] = t.promptHash;
    configs[t.name] = { task: t.name, output_type: t.kind, num_fewshot: t.numFewshot, version: t.version, ...(t.extra ?? {}) };
    if (t.contamination) contamination[t.name] = t.contamination;
    if (t.skipped) skipped[t.name] = t.skipped;
    groupSubtasks[t.name] = (t.subtasks ?? []).map((s) => s.name);
  }
  return {
    results,
    group_subtasks: groupSubtasks,
    configs,
    versions,
    'n-shot': nShot,
    'higher_is_better': hib,
    'n-samples': nSamples,
    config: {
      model: 'llmctl',
      model_args: `checkpoint=${info.checkpoint}${info.adapter ? `,adapter=${info.adapter}` : ''}`,
      checkpoint: info.checkpoint,
      adapter: info.adapter ?? null,
      checkpoint_manifest_sha256: info.manifestSha256,
      batch_size: info.batchSize,
      limit: info.limit ?? null,
      num_fewshot: info.numFewshot ?? null,
      share_context_kv: info.shareContext,
      bootstrap_iters: 0,
    },
    prompt_hashes: promptHash,
    ...(Object.keys(skipped).length ? { skipped } : {}),
    ...(info.contaminationFiles ? { contamination: { method: '13-gram overlap (GPT-3 appendix C)', files: info.contaminationFiles, tasks: contamination } } : {}),
    throughput: run.throughput,
    versions_software: info.versions,
    date: Date.now() / 1000,
    total_evaluation_time_seconds: String(info.seconds),
  };
}

/** Write a file through a temporary name and a rename, so a reader never sees half of it. */
export function writeFileAtomic(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** samples_<task>.jsonl beside the results file (one line per doc). */
export function writeSamples(run: EvalRun, dir: string): string[] {
  const written: string[] = [];
  for (const t of run.tasks) {
    if (!t.samples.length) continue;
    const path = join(dir, `samples_${t.name}.jsonl`);
    writeFileAtomic(path, t.samples.map((s) => JSON.stringify(s)).join('\n') + '\n');
    written.push(path);
  }
  return written;
}

function fmt(v: number | string | undefined): string {
  if (v === undefined) return '';
  return typeof v === 'number' ? (Number.isFinite(v) ? v.toFixed(4) : String(v)) : v;
}

/** lm-eval's markdown-like table: task, version, filter, n-shot, metric, value, ± stderr. */
export function resultsTable(run: EvalRun): string {
  const table = new Table({ head: ['Task', 'Version', 'Filter', 'n-shot', 'Metric', 'Value', '± Stderr', 'n'], style: { head: [], border: [] } });
  for (const t of run.tasks.flatMap((x) => [x, ...(x.subtasks ?? [])])) {
    if (t.skipped) {
      table.push([t.name, t.version, '', t.numFewshot, 'skipped', '', '', 0]);
      continue;
    }
    for (const [key, v] of Object.entries(t.metrics)) {
      const [metric, filter] = key.split(',') as [string, string];
      if (metric.endsWith('_stderr')) continue;
      table.push([t.name, t.version, filter, t.numFewshot, metric, fmt(v), fmt(t.metrics[`${metric}_stderr,${filter}`]), t.nEffective]);
    }
  }
  return table.toString();
}
