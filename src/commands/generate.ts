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
      .option('checkpoint', { type: 'string', describe: 'checkpoint directory (or a LoRA adapter directory: its base is loaded)' })
      .option('adapter', { type: 'string', describe: 'LoRA adapter directory to apply on top of --checkpoint' })
      .option('prompt', { alias: 'p', type: 'string', describe: 'text to continue (default: empty)' })
      .option('chat', { type: 'boolean', describe: 'wrap the prompt as a ChatML user turn' })
      .option('max-tokens', { alias: 'n', type: 'number', describe: 'tokens to generate (default 200)' })
      .option('temperature', { alias: 't', type: 'number', describe: 'sampling temperature; 0 = greedy (default 0.8)' })
      .option('top-k', { type: 'number', describe: 'sample among the k most likely tokens; 0 = all (default 0)' })
      .option('top-p', { type: 'number', describe: 'nucleus sampling: the smallest set with this much probability, in (0, 1] (default 1)' })
      .option('repetition-penalty', { type: 'number', describe: 'divide the logits of tokens already seen by this (default 1 = off)' })
      .option('stop', { type: 'string', array: true, describe: 'stop when the text contains this string (repeatable); escapes \\n \\t \\r \\\\ \\uXXXX are decoded' })
      .example('$0 generate --checkpoint runs/pretrain --prompt "ROMEO:" -t 0.8 --top-k 40 -n 200 --stop "\\n\\n"', 'sample until a blank line')
      .example('$0 generate --checkpoint runs/lora --chat --prompt "Give three tips for staying healthy."', 'chat with a LoRA fine-tune'),
  handler: handler<Args>('generate', async (args) => {
    const flags: Record<string, [string, unknown]> = {
      checkpoint: ['checkpoint', args.checkpoint], adapter: ['adapter', args.adapter], prompt: ['prompt', args.prompt], chat: ['chat', args.chat],
      'sampling.max_tokens': ['max-tokens', args['max-tokens']], 'sampling.temperature': ['temperature', args.temperature],
      'sampling.top_k': ['top-k', args['top-k']], 'sampling.top_p': ['top-p', args['top-p']],
      'sampling.repetition_penalty': ['repetition-penalty', args['repetition-penalty']],
      'sampling.stop': ['stop', args.stop?.map(decodeEscapes)], 'sampling.seed': ['seed', args.seed],
    };
    const cfg = loadStageConfig(
      GenerateConfigSchema, args,
      Object.fromEntries(Object.entries(flags).map(([path, [, value]]) => [path, value])),
      { flags: Object.fromEntries(Object.entries(flags).map(([path, [flag]]) => [path, flag])), command: 'generate' },
    );
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

/** Shells pass `--stop "\n\n"` as backslash-n: decode the usual escapes (an unknown one stays as typed). */
export function decodeEscapes(s: string): string {
  return s.replace(/\\(u[0-9a-fA-F]{4}|[ntr\\0])/g, (_, e: string) =>
    e[0] === 'u' ? String.fromCharCode(parseInt(e.slice(1), 16)) : ({ n: '\n', t: '\t', r: '\r', '\\': '\\', '0': '\0' } as Record<string, string>)[e]!,
  );
}
