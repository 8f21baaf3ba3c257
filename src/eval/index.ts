/**
 * `llmctl eval` as a library call: load the checkpoint (and adapter), the tasks and the contamination index,
 * run every task, write the results JSON (and per-task samples), return everything for the summary.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { sha256File } from '../checkpoint/dir.js';
import { versions } from '../checkpoint/model.js';
import type { EvalConfig } from '../config/eval.js';
import { loadForInference } from '../model/lora.js';
import { log } from '../util/log.js';
import { NgramIndex, lineageCorpora } from './contamination.js';
import { DataError } from './read.js';
import { resultsJson, writeFileAtomic, writeSamples } from './results.js';
import { type EvalRun, evaluate } from './runner.js';
import { DEFAULT_PATHS, type Task, checkTaskNames, loadTask } from './tasks.js';

export interface EvalOutput {
  run: EvalRun;
  json: Record<string, unknown>;
  resultsPath?: string;
  samplePaths: string[];
}

export function taskPath(cfg: EvalConfig, name: keyof typeof DEFAULT_PATHS): string {
  return cfg.paths[name] ?? (DEFAULT_PATHS[name] ? join(cfg.data_dir, DEFAULT_PATHS[name]) : '');
}

/** Read every task's data first, so a bad file fails before the model loads. */
export function loadTasks(cfg: EvalConfig): Task[] {
  const names = checkTaskNames(cfg.tasks);
  for (const k of Object.keys(cfg.paths)) checkTaskNames([k]);
  return names.map((n) => loadTask(n, taskPath(cfg, n), { fewshotPath: cfg.gsm8k_fewshot }));
}

export async function runEval(cfg: EvalConfig): Promise<EvalOutput> {
  const t0 = performance.now();
  const tasks = loadTasks(cfg);
  const baseDir = cfg.checkpoint;
  if (!existsSync(baseDir)) throw new DataError(`${baseDir}: checkpoint directory not found`);
  if (existsSync(join(baseDir, 'model.safetensors')) && !existsSync(join(baseDir, 'tokenizer.json'))) {
    throw new DataError(`${join(baseDir, 'tokenizer.json')}: the checkpoint has no tokenizer; eval needs it to encode the prompts`);
  }
  let contaminationFiles: string[] | undefined, index: NgramIndex | undefined;
  if (cfg.contamination !== false) {
    if (cfg.contamination === true) {
      const { files, missing } = lineageCorpora(baseDir);
      if (missing.length) log().warn({ missing }, 'contamination: some training files of the lineage are gone');
      if (!files.length) throw new DataError(`${join(baseDir, 'manifest.json')}: contamination: no training corpus found in the checkpoint's lineage; pass the files with --contamination-data FILE…`);
      contaminationFiles = files;
    } else contaminationFiles = cfg.contamination;
    index = NgramIndex.fromFiles(contaminationFiles);
    log().info({ files: contaminationFiles.length, ngrams: index.size }, 'contamination index built');
  }
  const { model, scale, dispose } = loadForInference(cfg.checkpoint, cfg.adapter);
  try {
    const run = await evaluate(model, tasks, {
      numFewshot: cfg.num_fewshot, limit: cfg.limit, batchSize: cfg.batch_size, shareContext: cfg.share_context, stride: cfg.stride, tailBytes: cfg.perplexity_tail_bytes,
      logSamples: cfg.log_samples, forward: scale !== undefined ? { loraScale: scale } : undefined, contamination: index,
      humaneval: { samples: cfg.humaneval.samples, k: cfg.humaneval.k, temperature: cfg.humaneval.temperature, topP: cfg.humaneval.top_p, seed: cfg.humaneval.seed, maxTokens: cfg.humaneval.max_tokens },
      gsm8kMaxTokens: cfg.gsm8k.max_tokens,
      sandbox: { python: cfg.sandbox.python, timeoutMs: cfg.sandbox.timeout_ms, memoryBytes: cfg.sandbox.memory_mb * 2 ** 20, outputBytes: cfg.sandbox.output_kb * 1024, workers: cfg.sandbox.workers },
    });
    const manifestPath = join(baseDir, 'manifest.json');
    const json = resultsJson(run, {
      checkpoint: cfg.checkpoint, adapter: cfg.adapter, manifestSha256: existsSync(manifestPath) ? await sha256File(manifestPath) : null,
      batchSize: cfg.batch_size, limit: cfg.limit, numFewshot: cfg.num_fewshot, shareContext: cfg.share_context,
      seconds: (performance.now() - t0) / 1000, versions: versions(), contaminationFiles,
    });
    let samplePaths: string[] = [];
    if (cfg.out) {
      writeFileAtomic(cfg.out, JSON.stringify(json, null, 2) + '\n');
      if (cfg.log_samples) samplePaths = writeSamples(run, dirname(cfg.out));
    }
    return { run, json, resultsPath: cfg.out, samplePaths };
  } finally {
    dispose();
  }
}
