import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandModule } from 'yargs';
import { MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../checkpoint/model.js';
import { QuantizeConfigSchema } from '../config/quantize.js';
import { calibrationSamples, perplexity, quantizeModel, readText, tokensOf } from '../quant/quantize.js';
import { log } from '../util/log.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & { checkpoint?: string; method?: string; out?: string; 'group-size'?: number; calibration?: string; eval?: string };

export const quantizeCommand: CommandModule<GlobalArgs, Args> = {
  command: 'quantize',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', describe: 'float checkpoint directory' })
      .option('method', { type: 'string', choices: ['int8', 'int4', 'gptq', 'awq'], describe: 'int8 per channel, int4 round-to-nearest, GPTQ or AWQ' })
      .option('out', { type: 'string', describe: 'checkpoint directory to write' })
      .option('group-size', { type: 'number', describe: 'int4/gptq/awq: input columns per scale (-1: per channel)' })
      .option('calibration', { type: 'string', describe: 'gptq/awq: calibration text or JSONL {"text"}' })
      .option('eval', { type: 'string', describe: 'held-out text for perplexity before/after' })
      .example('$0 quantize --config configs/quantize.yaml', 'GPTQ int4 of the merged LoRA model')
      .example('$0 quantize --checkpoint runs/pretrain --method int8 --out runs/pretrain-int8', 'per-channel int8'),
  handler: handler<Args>('quantize', async (args) => {
    const cfg = loadStageConfig(QuantizeConfigSchema, args, {
      checkpoint: args.checkpoint, method: args.method, out_dir: args.out, group_size: args['group-size'],
      'calibration.path': args.calibration, 'eval.path': args.eval,
    });
    await startBackend(args);
    const t0 = performance.now();
    const ck = loadCheckpoint(cfg.checkpoint);
    if (ck.quantization) {
      disposeParams(ck.params);
      throw new InputError(`${cfg.checkpoint}: already quantized (${ck.quantization.llmctl_method}); quantize a float checkpoint`);
    }
    const { config, tokenizer } = ck;
    let calibration: number[][] | undefined, evalIds: number[] | undefined;
    try {
      if (cfg.calibration && (cfg.method === 'gptq' || cfg.method === 'awq' || cfg.outlier_threshold)) {
        const seqLen = Math.min(cfg.calibration.seq_len ?? config.n_ctx, config.n_ctx);
        const ids = tokensOf(tokenizer, readText(cfg.calibration.path, cfg.calibration.text_field), cfg.calibration.samples * seqLen);
        calibration = calibrationSamples(ids, cfg.calibration.samples, seqLen);
        if (!calibration.length) throw new InputError(`${cfg.calibration.path}: fewer than ${seqLen} tokens of calibration text`);
      }
      if (cfg.eval) evalIds = tokensOf(tokenizer, readText(cfg.eval.path, cfg.eval.text_field), cfg.eval.max_tokens, true);
    } catch (err) {
      disposeParams(ck.params);
      throw err;
    }
    const before = evalIds ? perplexity(ck.params, config, evalIds).ppl : undefined;
    const q = quantizeModel(ck.params, config, cfg, calibration);
    const after = evalIds ? perplexity(q.params, config, evalIds).ppl : undefined;
    const seconds = (performance.now() - t0) / 1000;
    const sizeBefore = statSync(join(cfg.checkpoint, MODEL_FILE)).size;
    const metrics: Record<string, number> = {
      seconds,
      size_before_bytes: sizeBefore,
      ...(before !== undefined && after !== undefined ? { ppl_before: before, ppl_after: after, ppl_delta_pct: (100 * (after - before)) / before } : {}),
    };
    await saveCheckpoint(cfg.out_dir, {
      config, params: q.params, tokenizer, stage: 'quantize', stageConfig: cfg, parentDir: cfg.checkpoint, metrics, quantization: q.quantization,
      // Runs after model.safetensors is written and before the manifest: its size lands in the manifest's metrics.
      extra: (tmp) => {
        metrics.size_bytes = statSync(join(tmp, MODEL_FILE)).size;
        metrics.compression = sizeBefore / metrics.size_bytes;
      },
    });
    disposeParams(q.params);
    log().info({ quantized: q.quantized.length, float: q.float }, 'quantize');
    printSummary(args, 'quantize', {
      out_dir: cfg.out_dir,
      method: cfg.method,
      bits: q.quantization.bits,
      group_size: q.quantization.group_size,
      ...(cfg.method === 'gptq' ? { desc_act: cfg.desc_act } : {}),
      sym: q.quantization.sym,
      quantized_modules: q.quantized.length,
      ...(cfg.outlier_threshold ? { outlier_columns: Object.entries(q.params).filter(([k]) => k.endsWith('.outlier_idx')).reduce((n, [, t]) => n + t.size, 0) } : {}),
      float_tensors: describeFloat(q.float),
      ...(q.alphas ? { awq_alpha: q.alphas } : {}),
      size_before_mb: sizeBefore / 1e6,
      size_mb: metrics.size_bytes! / 1e6,
      compression: metrics.compression,
      ...(before !== undefined ? { ppl_before: before, ppl_after: after, ppl_delta_pct: metrics.ppl_delta_pct, eval_tokens: cfg.eval?.max_tokens } : {}),
      seconds,
    });
  }),
};

/** 'wte.weight, wpe.weight + 9 norms + 24 biases' rather than 44 names. */
function describeFloat(names: string[]): string {
  const norms = names.filter((n) => /(ln_\d|ln_f)\.(weight|bias)$/.test(n));
  const biases = names.filter((n) => n.endsWith('.bias') && !norms.includes(n));
  const rest = names.filter((n) => !norms.includes(n) && !biases.includes(n));
  return [rest.join(', '), norms.length ? `${norms.length} norm tensors` : '', biases.length ? `${biases.length} biases` : ''].filter(Boolean).join(' + ');
}
