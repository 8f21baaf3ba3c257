import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { CommandModule } from 'yargs';
import { z } from 'zod';
import { log } from '../util/log.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary } from './common.js';

/** A pipeline is a list of stages, each one `llmctl <run> --config <config> [--set ...]`, run in order. */
export const PipelineConfigSchema = z.strictObject({
  stages: z.array(z.strictObject({
    run: z.string().min(1),
    config: z.string().min(1).optional(),
    args: z.array(z.string()).default([]),
  })).min(1),
});

type Args = GlobalArgs & { from?: string };

export const pipelineCommand: CommandModule<GlobalArgs, Args> = {
  command: 'pipeline',
  builder: (y) =>
    y
      .option('from', { type: 'string', describe: 'start at the first stage with this name' })
      .example('$0 pipeline --config configs/pipeline.yaml', 'prepare, pretrain and generate in one go')
      .example('$0 pipeline --config configs/pipeline-full.yaml --from sft', 'rerun from the sft stage on'),
  handler: handler<Args>('pipeline', async (args) => {
    const cfg = loadStageConfig(PipelineConfigSchema, args, {}, { command: 'pipeline' });
    let stages = cfg.stages;
    if (args.from) {
      const at = stages.findIndex((s) => s.run === args.from);
      if (at < 0) throw new InputError(`--from ${args.from}: no such stage in ${args.config} (stages: ${stages.map((s) => s.run).join(', ')})`);
      stages = stages.slice(at);
    }
    // Each stage runs as its own process: the same as chaining the commands in a shell script.
    const cli = fileURLToPath(new URL('../../bin/llmctl.js', import.meta.url));
    const seconds: Record<string, number> = {};
    for (const [i, s] of stages.entries()) {
      const argv = [cli, s.run, ...(s.config ? ['--config', s.config] : []), ...s.args, '--backend', args.backend, '--log-level', args['log-level'], ...(args.seed !== undefined ? ['--seed', String(args.seed)] : [])];
      log().info({ stage: s.run, argv: argv.slice(1).join(' ') }, `pipeline stage ${i + 1}/${stages.length}`);
      const t0 = performance.now();
      const r = spawnSync(process.execPath, argv, { stdio: 'inherit' });
      seconds[`${i + 1}. ${s.run} (s)`] = Math.round((performance.now() - t0) / 100) / 10;
      if (r.status !== 0) {
        process.exitCode = r.status ?? 1;
        throw new Error(`stage ${i + 1} (${s.run}) failed with exit code ${r.status ?? r.signal}`);
      }
    }
    printSummary(args, 'pipeline', seconds);
  }),
};
