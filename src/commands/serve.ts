import type { CommandModule } from 'yargs';
import { ServeConfigSchema } from '../config/serve.js';
import { startServer } from '../serve/index.js';
import { log } from '../util/log.js';
import { type GlobalArgs, InputError, handler, loadStageConfig, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & { checkpoint?: string; host?: string; port?: number; 'api-key'?: string; lora?: string[]; 'max-num-seqs'?: number; 'model-name'?: string };

export const serveCommand: CommandModule<GlobalArgs, Args> = {
  command: 'serve',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', describe: 'checkpoint directory to serve' })
      .option('host', { type: 'string', describe: 'listen address (default 127.0.0.1)' })
      .option('port', { type: 'number', describe: 'port (default 8000; 0 = any free port)' })
      .option('api-key', { type: 'string', describe: 'require Authorization: Bearer <key> on /v1/*' })
      .option('lora', { type: 'string', array: true, describe: 'serve a LoRA adapter as a model: name=DIR (repeatable)' })
      .option('max-num-seqs', { type: 'number', describe: 'most sequences batched together' })
      .option('model-name', { type: 'string', describe: 'the base model\'s name in requests (default: the directory name)' })
      .example('$0 serve --checkpoint runs/sft --port 8000', 'serve the SFT model to any OpenAI client on 127.0.0.1:8000')
      .example('$0 serve --config configs/serve.yaml --lora chat=runs/lora', 'serve the base and a LoRA adapter as two models'),
  handler: handler<Args>('serve', async (args) => {
    const lora: Record<string, string> = {};
    for (const spec of args.lora ?? []) {
      const eq = spec.indexOf('=');
      if (eq <= 0 || eq === spec.length - 1) throw new InputError(`--lora ${spec}: expected name=DIR`);
      lora[spec.slice(0, eq)] = spec.slice(eq + 1);
    }
    const cfg = loadStageConfig(ServeConfigSchema, args, {
      checkpoint: args.checkpoint, host: args.host, port: args.port, api_key: args['api-key'], model_name: args['model-name'],
      'engine.max_num_seqs': args['max-num-seqs'], ...(args.lora ? { lora } : {}),
    }, { flags: { checkpoint: 'checkpoint' } });
    await startBackend(args);
    const server = await startServer(cfg);
    const e = server.engine.cfg;
    log().info({ url: server.url, models: [...server.engine.variants.keys()].map((k) => k || 'base'), num_blocks: e.num_blocks, block_size: e.block_size, kv_cache_mb: +(server.engine.pool.bytes / 2 ** 20).toFixed(2), max_num_seqs: e.max_num_seqs }, `serving on ${server.url}`);
    // SIGTERM/SIGINT: stop accepting, let running requests finish (or time out), then exit 0.
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        log().info({ signal, running: server.engine.numRequests }, 'shutting down: draining running requests');
        server.close().then((cancelled) => {
          log().info({ cancelled }, 'stopped');
          resolve();
        });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    printSummary(args, 'serve', { url: server.url, steps: server.engine.steps, prompt_tokens: server.engine.promptTokensTotal, generation_tokens: server.engine.generationTokensTotal, preemptions: server.engine.scheduler.numPreemptions });
  }),
};
