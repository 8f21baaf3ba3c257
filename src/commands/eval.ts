import type { CommandModule } from 'yargs';
import { EvalConfigSchema } from '../config/eval.js';
import { runEval } from '../eval/index.js';
import { DataError } from '../eval/read.js';
import { resultsTable } from '../eval/results.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & {
  checkpoint?: string; adapter?: string; tasks?: string; 'num-fewshot'?: number; limit?: number; 'batch-size'?: number;
  'log-samples'?: boolean; out?: string; 'data-dir'?: string; 'ppl-file'?: string; stride?: number; 'share-context'?: boolean;
  'contamination-data'?: string[];
};

export const evalCommand: CommandModule<GlobalArgs, Args> = {
  command: 'eval',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', describe: 'checkpoint directory (full, or a LoRA adapter directory)' })
      .option('adapter', { type: 'string', describe: 'LoRA adapter directory to apply on the checkpoint' })
      .option('tasks', { type: 'string', describe: 'comma-separated: mmlu,hellaswag,arc_easy,arc_challenge,truthfulqa_mc1,truthfulqa_mc2,gsm8k,humaneval,perplexity' })
      .option('num-fewshot', { type: 'number', describe: 'few-shot examples (default: each task\'s own)' })
      .option('limit', { type: 'number', describe: 'only the first N items of each task' })
      .option('batch-size', { type: 'number', describe: 'sequences per forward pass' })
      .option('log-samples', { type: 'boolean', describe: 'write samples_<task>.jsonl beside --out' })
      .option('out', { type: 'string', describe: 'results JSON path (lm-eval shape)' })
      .option('data-dir', { type: 'string', describe: 'where the task files lie (default ../shared/data/eval)' })
      .option('ppl-file', { type: 'string', describe: 'text or JSONL file for the perplexity task' })
      .option('stride', { type: 'number', describe: 'perplexity window stride in tokens (default: the context length)' })
      .option('share-context', { type: 'boolean', describe: 'reuse a question\'s context KV cache for every choice (default); --no-share-context runs each in full' })
      .option('contamination-data', { type: 'string', array: true, describe: '13-gram overlap with these files (no files: the lineage\'s training corpora)' })
      .example('$0 eval --checkpoint runs/sft --tasks arc_easy,hellaswag --limit 50', 'two benchmarks on the first 50 items')
      .example('$0 eval --config configs/eval.yaml', 'the tasks and data of a config file'),
  handler: handler<Args>('eval', async (args) => {
    const contamination = args['contamination-data'] === undefined ? undefined : args['contamination-data'].length ? args['contamination-data'] : true;
    const cfg = loadStageConfig(EvalConfigSchema, args, {
      checkpoint: args.checkpoint, adapter: args.adapter, tasks: args.tasks?.split(',').map((t) => t.trim()).filter(Boolean),
      num_fewshot: args['num-fewshot'], limit: args.limit, batch_size: args['batch-size'], log_samples: args['log-samples'], out: args.out,
      data_dir: args['data-dir'], 'paths.perplexity': args['ppl-file'], stride: args.stride,
      share_context: args['share-context'], contamination, 'humaneval.seed': args.seed,
    }, { flags: { checkpoint: 'checkpoint' } });
    if (cfg.log_samples && !cfg.out) throw new InputError('--log-samples: needs --out (the samples are written beside the results file)');
    await startBackend(args);
    let out;
    try {
      out = await runEval(cfg);
    } catch (err) {
      if (err instanceof DataError) throw new InputError(err.message);
      throw err;
    }
    if (args.json) {
      process.stdout.write(JSON.stringify(out.json) + '\n');
      return;
    }
    process.stdout.write(resultsTable(out.run) + '\n');
    for (const t of out.run.tasks) if (t.skipped) process.stderr.write(`${t.skipped}\n`);
    const tp = out.run.throughput;
    printSummary(args, 'eval', {
      checkpoint: cfg.checkpoint, ...(cfg.adapter ? { adapter: cfg.adapter } : {}),
      loglik_requests: tp.loglik_requests, loglik_requests_per_s: Number(tp.loglik_requests_per_s.toFixed(1)),
      generated_tokens: tp.generated_tokens, generated_tokens_per_s: Number(tp.generated_tokens_per_s.toFixed(1)),
      seconds: Number(out.json.total_evaluation_time_seconds), ...(out.resultsPath ? { results: out.resultsPath } : {}),
      ...(out.samplePaths.length ? { samples: out.samplePaths.length } : {}),
    });
  }),
};
