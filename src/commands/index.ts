/**
 * The list of subcommands. Each entry loads its module only when that command runs, so `llmctl --help`
 * and config errors answer without loading tfjs. Add a stage here: name, one-line description, loader.
 */
import type { CommandModule } from 'yargs';
import type { GlobalArgs } from './global.js';

export interface CommandEntry {
  name: string;
  describe: string;
  load: () => Promise<CommandModule<GlobalArgs, any>>;
}

export const COMMANDS: CommandEntry[] = [
  { name: 'prepare', describe: 'tokenize text/JSONL into token shards (training a BPE tokenizer if asked)', load: async () => (await import('./prepare.js')).prepareCommand },
  { name: 'pretrain', describe: 'train a model from scratch (or continue) on token shards', load: async () => (await import('./pretrain.js')).pretrainCommand },
  { name: 'generate', describe: 'sample text from a checkpoint (streams to stdout)', load: async () => (await import('./generate.js')).generateCommand },
  { name: 'import', describe: 'convert an external model (llama2.c .bin + tok.bin) into a checkpoint directory', load: async () => (await import('./import.js')).importCommand },
  { name: 'sft', describe: 'full instruction fine-tuning on Alpaca / chat JSONL (loss on assistant tokens only)', load: async () => (await import('./sft.js')).sftCommand },
  { name: 'lora', describe: 'LoRA fine-tuning (train an adapter), or `lora merge` to fold an adapter into its base', load: async () => (await import('./lora.js')).loraCommand },
  { name: 'eval', describe: 'benchmarks as lm-evaluation-harness (MMLU, HellaSwag, ARC, TruthfulQA, GSM8K, HumanEval, perplexity)', load: async () => (await import('./eval.js')).evalCommand },
  { name: 'arena', describe: 'side-by-side ratings: models answer prompts, a judge (reward model, human, battles file) decides, Elo / Bradley–Terry', load: async () => (await import('./arena.js')).arenaCommand },
  { name: 'pipeline', describe: 'run several stages in order, each reading the checkpoint the previous one wrote', load: async () => (await import('./pipeline.js')).pipelineCommand },
];
