import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandModule } from 'yargs';
import { LoraMergeConfigSchema } from '../config/convert.js';
import { LoraConfigSchema } from '../config/stages.js';
import { type GlobalArgs, type OutputArgs, handler, loadStageConfig, outputOptions, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & OutputArgs & { action?: string; base?: string; adapter?: string; out?: string };

export const loraCommand: CommandModule<GlobalArgs, Args> = {
  command: 'lora [action]',
  builder: (y) =>
    outputOptions(y)
      .positional('action', { type: 'string', choices: ['train', 'merge'], default: 'train', describe: 'train (with --config) or merge' })
      .option('base', { type: 'string', describe: 'merge: base checkpoint (default: the adapter\'s base_model_name_or_path)' })
      .option('adapter', { type: 'string', describe: 'merge: adapter directory written by llmctl lora' })
      .option('out', { type: 'string', describe: 'merge: checkpoint directory to write' })
      .example('$0 lora --config configs/lora.yaml', 'train an adapter on the base named in the config')
      .example('$0 lora merge --adapter runs/lora --out runs/lora-merged', 'fold an adapter into its base (flags or --config: adapter, base, out)'),
  handler: handler<Args>('lora', async (args) => {
    if (args.action === 'merge') {
      const cfg = loadStageConfig(LoraMergeConfigSchema, args, { adapter: args.adapter, base: args.base, out: args.out }, {
        flags: { adapter: 'adapter', base: 'base', out: 'out' },
      });
      await startBackend(args);
      const { mergeLora } = await import('../train/sft.js'); // after the config checks: it loads tfjs
      const r = await mergeLora({ ...cfg, overwrite: args.overwrite });
      printSummary(args, 'lora merge', { out: cfg.out, base: r.base, adapter: cfg.adapter, merged_modules: r.modules });
      return;
    }
    const cfg = loadStageConfig(LoraConfigSchema, args, { 'train.seed': args.seed }, { command: 'lora' });
    await startBackend(args);
    // Loaded after the config checks: these load tfjs.
    const [{ lora }, { ADAPTER_WEIGHTS_FILE }] = await Promise.all([import('../train/sft.js'), import('../model/lora.js')]);
    const r = await lora(cfg, { resume: args.resume, overwrite: args.overwrite, force: args.force });
    printSummary(args, 'lora', {
      out_dir: cfg.out_dir,
      base: cfg.base,
      modules: r.modules.length,
      r: cfg.lora.r,
      alpha: cfg.lora.alpha,
      trainable_params: r.adapterParams,
      base_params: r.baseParams,
      trainable_pct: (100 * r.adapterParams) / r.baseParams,
      adapter_bytes: statSync(join(cfg.out_dir, ADAPTER_WEIGHTS_FILE)).size,
      rows: r.data.rows,
      skipped_rows: r.data.skipped,
      truncated: r.data.stats.truncated,
      ...trainingSummary(r),
    });
  }),
};
