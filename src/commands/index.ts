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
  { name: 'clean', describe: 'clean a corpus (dedup, quality filters, PII scrubbing, toxicity) into JSONL', load: async () => (await import('./clean.js')).cleanCommand },
  { name: 'pretrain', describe: 'train a model from scratch (or continue) on token shards', load: async () => (await import('./pretrain.js')).pretrainCommand },
  { name: 'generate', describe: 'sample text from a checkpoint (streams to stdout)', load: async () => (await import('./generate.js')).generateCommand },
  { name: 'import', describe: 'convert an external model (llama2.c .bin + tok.bin, or a Hugging Face Llama/GPT-2 directory) into a checkpoint directory', load: async () => (await import('./import.js')).importCommand },
  { name: 'sft', describe: 'full instruction fine-tuning on Alpaca / chat JSONL (loss on assistant tokens only)', load: async () => (await import('./sft.js')).sftCommand },
  { name: 'lora', describe: 'LoRA fine-tuning (train an adapter), or `lora merge` to fold an adapter into its base', load: async () => (await import('./lora.js')).loraCommand },
  { name: 'rm', describe: 'train a reward model (Bradley–Terry on preference pairs), or `rm score` to score rows', load: async () => (await import('./rm.js')).rmCommand },
  { name: 'dpo', describe: 'direct preference optimization (sigmoid / ipo / hinge) of an SFT checkpoint against a frozen reference', load: async () => (await import('./dpo.js')).dpoCommand },
  { name: 'ppo', describe: 'RLHF: PPO (value head, KL penalty) or GRPO against a reward model or a rule reward', load: async () => (await import('./ppo.js')).ppoCommand },
  { name: 'serve', describe: 'OpenAI-compatible HTTP server: continuous batching over a paged KV cache, LoRA adapters, metrics', load: async () => (await import('./serve.js')).serveCommand },
  { name: 'quantize', describe: 'quantize a checkpoint: int8, int4 (RTN), GPTQ or AWQ; the result loads everywhere a checkpoint does', load: async () => (await import('./quantize.js')).quantizeCommand },
  { name: 'export', describe: 'write a checkpoint as GGUF (f32, f16, q8_0, q4_0) for llama.cpp, Ollama, LM Studio', load: async () => (await import('./export.js')).exportCommand },
  { name: 'eval', describe: 'benchmarks as lm-evaluation-harness (MMLU, HellaSwag, ARC, TruthfulQA, GSM8K, HumanEval, perplexity)', load: async () => (await import('./eval.js')).evalCommand },
  { name: 'arena', describe: 'side-by-side ratings: models answer prompts, a judge (reward model, human, battles file) decides, Elo / Bradley–Terry', load: async () => (await import('./arena.js')).arenaCommand },
  { name: 'pipeline', describe: 'run several stages in order, each reading the checkpoint the previous one wrote', load: async () => (await import('./pipeline.js')).pipelineCommand },
];
