import type { CommandModule } from 'yargs';
import { GenerateConfigSchema } from '../config/stages.js';
import { log } from '../util/log.js';
import { type GlobalArgs, handler, loadStageConfig, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & {
  checkpoint?: string; adapter?: string; prompt?: string; chat?: boolean;
  'max-tokens'?: number; temperature?: number; 'top-k'?: number; 'top-p'?: number; 'repetition-penalty'?: number; stop?: string[];
};

export const generateCommand: CommandModule<GlobalArgs, Args> = {
  command: 'generate',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', describe: 'checkpoint directory' })
      .option('adapter', { type: 'string', describe: 'LoRA adapter directory to apply' })
      .option('prompt', { alias: 'p', type: 'string' })
      .option('chat', { type: 'boolean', describe: 'wrap the prompt as a ChatML user turn' })
      .option('max-tokens', { alias: 'n', type: 'number' })
      .option('temperature', { alias: 't', type: 'number', describe: '0 = greedy' })
      .option('top-k', { type: 'number' })
      .option('top-p', { type: 'number' })
      .option('repetition-penalty', { type: 'number' })
      .option('stop', { type: 'string', array: true, describe: 'stop strings' }),
  handler: handler<Args>('generate', async (args) => {
    const cfg = loadStageConfig(GenerateConfigSchema, args, {
      checkpoint: args.checkpoint, adapter: args.adapter, prompt: args.prompt, chat: args.chat,
      'sampling.max_tokens': args['max-tokens'], 'sampling.temperature': args.temperature, 'sampling.top_k': args['top-k'],
      'sampling.top_p': args['top-p'], 'sampling.repetition_penalty': args['repetition-penalty'], 'sampling.stop': args.stop, 'sampling.seed': args.seed,
    });
    await startBackend(args);
    // Loaded after the config checks: these load tfjs.
    const [{ generate }, { loadForInference }, { promptIds }] = await Promise.all([import('../model/generate.js'), import('../model/lora.js'), import('../model/prompt.js')]);
    const { model, scale, dispose } = loadForInference(cfg.checkpoint, cfg.adapter);
    const ids = promptIds(model.tokenizer, cfg.prompt, cfg.chat);
    if (!args.json) process.stdout.write(cfg.prompt && !cfg.chat ? cfg.prompt : '');
    const g = generate(model, ids, {
      ...cfg.sampling,
      forward: scale !== undefined ? { loraScale: scale } : undefined,
      onText: args.json ? undefined : (t) => process.stdout.write(t),
    });
    if (!args.json) process.stdout.write('\n');
    log().info({ prompt_tokens: g.promptTokens, completion_tokens: g.ids.length, ttft_ms: Math.round(g.ttftMs), tokens_per_s: Math.round(g.tokensPerSecond), finish_reason: g.finishReason }, 'generate');
    if (args.json) printSummary(args, 'generate', { text: g.text, prompt_tokens: g.promptTokens, completion_tokens: g.ids.length, finish_reason: g.finishReason, ttft_ms: g.ttftMs, tokens_per_s: g.tokensPerSecond });
    dispose();
  }),
};
