/**
 * `llmctl prepare`: text / JSONL → token shards (+ the tokenizer that made them). Input is streamed in
 * chunks, so corpora larger than memory work; only BPE training reads up to tokenizer.train.max_bytes.
 */
import { createReadStream, existsSync, mkdirSync, statSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import type { PrepareConfig } from '../config/stages.js';
import { Tokenizer } from '../tokenizer/index.js';
import { Cleaner, type StepReport } from './clean/pipeline.js';
import { writeSamples } from './clean/corpus.js';
import { log } from '../util/log.js';
import { type ShardMeta, ShardWriter, writeShardMeta } from './shards.js';

export interface PrepareResult {
  outDir: string;
  vocabSize: number;
  trainTokens: number;
  valTokens: number;
  bytes: number;
  seconds: number;
  /** Per-step counts of the `clean:` steps, when the config has them. */
  clean?: StepReport[];
}

/** Documents of one input file, with the byte offset where each ends (for the train/val split). */
async function* documents(path: string, textField: string): AsyncGenerator<{ text: string; endByte: number }> {
  if (path.endsWith('.jsonl')) {
    let line = 0, bytes = 0;
    const rl = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity });
    for await (const raw of rl) {
      line += 1;
      bytes += Buffer.byteLength(raw) + 1;
      if (!raw.trim()) continue;
      let row: unknown;
      try {
        row = JSON.parse(raw);
      } catch (err) {
        throw new Error(`${path}: line ${line}: not valid JSON (${(err as Error).message})`);
      }
      const text = (row as Record<string, unknown>)[textField];
      if (typeof text !== 'string') throw new Error(`${path}: line ${line}: field '${textField}' is missing or not a string`);
      yield { text, endByte: bytes };
    }
    return;
  }
  // Plain text: one document, streamed and cut at blank lines, so BPE words are rarely split and the
  // train/val boundary falls between paragraphs.
  let carry = '', bytes = 0;
  for await (const chunk of createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 16 })) {
    carry += chunk as string;
    let cut: number;
    while ((cut = carry.indexOf('\n\n')) >= 0) {
      const para = carry.slice(0, cut + 2);
      carry = carry.slice(cut + 2);
      bytes += Buffer.byteLength(para);
      yield { text: para, endByte: bytes };
    }
  }
  bytes += Buffer.byteLength(carry);
  yield { text: carry, endByte: bytes };
}

function trainingText(cfg: PrepareConfig, maxBytes: number): string[] {
  const texts: string[] = [];
  let budget = maxBytes;
  for (const path of cfg.inputs) {
    if (budget <= 0) break;
    const buf = readFileSync(path);
    const text = buf.subarray(0, budget).toString('utf8');
    budget -= buf.length;
    if (path.endsWith('.jsonl')) {
      for (const line of text.split('\n')) {
        try {
          const v = (JSON.parse(line) as Record<string, unknown>)[cfg.text_field];
          if (typeof v === 'string') texts.push(v);
        } catch {
          // a line cut by the byte budget, or bad JSON: the streaming pass reports bad rows with line numbers
        }
      }
    } else {
      texts.push(text);
    }
  }
  return texts;
}

export async function prepare(cfg: PrepareConfig): Promise<PrepareResult> {
  const t0 = performance.now();
  for (const p of cfg.inputs) if (!existsSync(p)) throw new Error(`${p}: input file not found`);
  mkdirSync(cfg.out_dir, { recursive: true });

  let tokenizer: Tokenizer;
  if ('from' in cfg.tokenizer) {
    tokenizer = Tokenizer.load(cfg.tokenizer.from);
  } else {
    const { vocab_size, max_bytes } = cfg.tokenizer.train;
    log().info({ vocab_size }, 'training byte-level BPE tokenizer');
    tokenizer = Tokenizer.train(trainingText(cfg, max_bytes), { vocabSize: vocab_size });
  }
  tokenizer.save(cfg.out_dir);

  const dtype: ShardMeta['dtype'] = tokenizer.vocabSize <= 65536 ? 'uint16' : 'uint32';
  const train = new ShardWriter(cfg.out_dir, 'train', dtype, cfg.shard_tokens);
  const val = new ShardWriter(cfg.out_dir, 'val', dtype, cfg.shard_tokens);
  const sources: ShardMeta['sources'] = [];
  const cleaner = cfg.clean ? new Cleaner(cfg.clean) : undefined;
  let totalBytes = 0;
  try {
    for (const path of cfg.inputs) {
      const size = statSync(path).size;
      totalBytes += size;
      sources.push({ path, bytes: size });
      const valFrom = size * (1 - cfg.val_fraction);
      let last = train;
      let docIndex = 0;
      for await (const doc of documents(path, cfg.text_field)) {
        let text = doc.text;
        if (cleaner) {
          const kept = cleaner.process({ id: `${path}#${++docIndex}`, parts: [text] });
          if (!kept) continue;
          text = path.endsWith('.jsonl') ? kept.parts[0]! : `${kept.parts[0]}\n\n`; // paragraphs keep their blank line
        }
        const ids = tokenizer.encode(text, { allowSpecial: false });
        if (path.endsWith('.jsonl')) ids.push(tokenizer.eosId); // <|endoftext|> separates documents, as in GPT-2
        last = doc.endByte > valFrom && cfg.val_fraction > 0 ? val : train;
        last.write(ids);
      }
      if (!path.endsWith('.jsonl')) last.write([tokenizer.eosId]);
    }
  } finally {
    train.close();
    val.close();
  }
  writeShardMeta(cfg.out_dir, {
    format: 'llmctl-tokens',
    dtype,
    vocab_size: tokenizer.vocabSize,
    eos_id: tokenizer.eosId,
    splits: { train: { shards: train.shards, tokens: train.tokens }, val: { shards: val.shards, tokens: val.tokens } },
    sources,
    ...(cleaner ? { clean: cleaner.report() } : {}),
  });
  if (cleaner && cfg.clean!.samples > 0) writeSamples(join(cfg.out_dir, 'clean-samples.jsonl'), cleaner.samples);
  return { outDir: cfg.out_dir, vocabSize: tokenizer.vocabSize, trainTokens: train.tokens, valTokens: val.tokens, bytes: totalBytes, seconds: (performance.now() - t0) / 1000, ...(cleaner ? { clean: cleaner.report() } : {}) };
}
