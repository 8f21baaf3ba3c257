import { renameSync, statSync } from 'node:fs';
import type { CommandModule } from 'yargs';
import { disposeParams, loadCheckpoint } from '../checkpoint/model.js';
import { paramShapes } from '../model/gpt.js';
import { type ExportType, toGguf } from '../quant/gguf-model.js';
import { writeGguf } from '../quant/gguf.js';
import { dequantizeParams } from '../quant/tensors.js';
import { type GlobalArgs, handler, printSummary, startBackend } from './common.js';

type Args = GlobalArgs & { format: string; type: ExportType; checkpoint: string; out: string; name?: string };

export const exportCommand: CommandModule<GlobalArgs, Args> = {
  command: 'export',
  builder: (y) =>
    y
      .option('format', { type: 'string', choices: ['gguf'], default: 'gguf', describe: 'file format (GGUF v3, for llama.cpp / Ollama / LM Studio)' })
      .option('type', { type: 'string', choices: ['f32', 'f16', 'q8_0', 'q4_0'] as ExportType[], default: 'f16' as ExportType, describe: 'tensor type of the matrices (rows not a multiple of 32 stay f16)' })
      .option('checkpoint', { type: 'string', demandOption: true, describe: 'checkpoint directory (float or quantized)' })
      .option('out', { type: 'string', demandOption: true, describe: 'the .gguf file to write' })
      .option('name', { type: 'string', describe: 'general.name (default: the checkpoint directory)' })
      .example('$0 export --format gguf --type q8_0 --checkpoint runs/stories260K --out stories260K.gguf', 'a GGUF file for llama.cpp'),
  handler: handler<Args>('export', async (args) => {
    await startBackend(args);
    const ck = loadCheckpoint(args.checkpoint);
    // A quantized checkpoint is dequantized first: GGUF's block formats are not AutoGPTQ's.
    const params = ck.quantization ? dequantizeParams(ck.params, paramShapes(ck.config)) : ck.params;
    try {
      const { file, summary } = toGguf(params, ck.config, ck.tokenizer, args.type, args.name ?? args.checkpoint);
      const tmp = `${args.out}.tmp-${process.pid}`;
      writeGguf(tmp, file);
      renameSync(tmp, args.out); // a reader never sees half a file
      printSummary(args, 'export', {
        out: args.out,
        format: 'gguf v3',
        architecture: ck.config.arch,
        type: args.type,
        tensors: summary.types,
        ...(summary.keptF16.length ? { kept_f16: `${summary.keptF16.length} (rows not a multiple of 32: ${summary.keptF16.slice(0, 3).join(', ')}${summary.keptF16.length > 3 ? ', …' : ''})` } : {}),
        ...(ck.quantization ? { dequantized_from: ck.quantization.llmctl_method } : {}),
        size_mb: statSync(args.out).size / 1e6,
      });
    } finally {
      if (params !== ck.params) disposeParams(params);
      disposeParams(ck.params);
    }
  }),
};
