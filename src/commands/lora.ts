import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandModule } from 'yargs';
import { LoraConfigSchema } from '../config/stages.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary, startBackend, trainingSummary } from './common.js';

type Args = GlobalArgs & { action?: string; resume: boolean; base?: string; adapter?: string; out?: string };

export const loraCommand: CommandModule<GlobalArgs, Args> = {
  command: 'lora [action]',
  builder: (y) =>
    y
      .positional('action', { type: 'string', choices: ['train', 'merge'], default: 'train', describe: 'train (with --config) or merge' })
      .option('resume', { type: 'boolean', default: false, describe: 'train: continue from the trainer state in out_dir' })
      .option('base', { type: 'string', describe: 'merge: base checkpoint (default: the adapter\'s base_model_name_or_path)' })
      .option('adapter', { type: 'string', describe: 'merge: adapter directory written by llmctl lora' })
      .option('out', { type: 'string', describe: 'merge: checkpoint directory to write' }),
  handler: handler<Args>('lora', async (args) => {
    if (args.action === 'merge') {
      if (!args.adapter || !args.out) throw new InputError('lora merge needs --adapter DIR and --out DIR (and --base DIR unless the adapter names its base)');
      await startBackend(args);
      const { mergeLora } = await import('../train/sft.js');
      const r = await mergeLora({ base: args.base, adapter: args.adapter, out: args.out });
      printSummary(args, 'lora merge', { out: args.out, base: r.base, adapter: args.adapter, merged_modules: r.modules });
      return;
    }
    const cfg = loadStageConfig(LoraConfigSchema, args, { 'train.seed': args.seed });
    await startBackend(args);
    // Loaded after the config checks: these load tfjs.
    const [{ lora }, { ADAPTER_WEIGHTS_FILE }] = await Promise.all([import('../train/sft.js'), import('../model/lora.js')]);
    const r = await lora(cfg, { resume: args.resume });
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
