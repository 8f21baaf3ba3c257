/**
 * `llmctl prepare`: text / JSONL → token shards (+ the tokenizer that made them). Input is streamed in
 * chunks, so corpora larger than memory work; only BPE training reads up to tokenizer.train.max_bytes.
 */
import { createReadStream, mkdirSync, readFileSync } from 'node:fs';
import { checkTextInput, streamJsonlRows } from './input.js';
import { join } from 'node:path';
import type { PrepareConfig } from '../config/stages.js';
import { Tokenizer } from '../tokenizer/index.js';
import { InputError } from '../util/errors.js';
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

/**
 * Documents of one input file, with the (raw) byte offsets where each starts and ends, for the split.
 * JSONL: one row each (a UTF-8 BOM before the first is dropped). Plain text: cut at blank lines, so BPE
 * words are rarely split and the train/val boundary falls between paragraphs; CRLF line ends become LF.
 */
async function* documents(path: string, textField: string): AsyncGenerator<{ text: string; startByte: number; endByte: number }> {
  if (path.endsWith('.jsonl')) {
    for await (const { value, line, startByte, endByte } of streamJsonlRows(path)) {
      const text = (value as Record<string, unknown>)[textField];
      if (typeof text !== 'string') throw new Error(`${path}: line ${line}: field '${textField}' is missing or not a string`);
      yield { text, startByte, endByte };
    }
    return;
  }
  let carry = '', bytes = 0, first = true;
  const emit = (raw: string) => {
    const start = bytes;
    bytes += Buffer.byteLength(raw);
    return { text: raw.replace(/\r\n/g, '\n'), startByte: start, endByte: bytes };
  };
  for await (const chunk of createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 16 })) {
    carry += chunk as string;
    if (first && carry.startsWith('\uFEFF')) {
      bytes += 3; // the BOM's bytes, so offsets stay those of the file
      carry = carry.slice(1);
    }
    first = false;
    let m: RegExpExecArray | null;
    while ((m = /\r?\n\r?\n/.exec(carry))) {
      const cut = m.index + m[0].length;
      yield emit(carry.slice(0, cut));
      carry = carry.slice(cut);
    }
  }
  yield emit(carry);
}

function trainingText(cfg: PrepareConfig, maxBytes: number): string[] {
  const texts: string[] = [];
  let budget = maxBytes;
  for (const path of cfg.inputs) {
    if (budget <= 0) break;
    const buf = readFileSync(path);
    const text = buf.subarray(0, budget).toString('utf8').replace(/^\uFEFF/, '').replace(/\r\n/g, '\n');
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
  const sizes = cfg.inputs.map(checkTextInput);
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
    for (const [i, path] of cfg.inputs.entries()) {
      const size = sizes[i]!;
      totalBytes += size;
      sources.push({ path, bytes: size });
      const trainBefore = train.tokens, valBefore = val.tokens;
      // The last val_fraction of each file (by bytes) is validation: whole documents where the boundary
      // falls between them; a document across the boundary goes to the side holding most of it, except
      // the file's last one (e.g. a text with no blank lines: one document), which is cut by tokens.
      const valFrom = cfg.val_fraction > 0 ? size * (1 - cfg.val_fraction) : Infinity;
      const jsonl = path.endsWith('.jsonl');
      let docIndex = 0;
      for await (const doc of documents(path, cfg.text_field)) {
        let text = doc.text;
        if (cleaner) {
          const kept = cleaner.process({ id: `${path}#${++docIndex}`, parts: [text] });
          if (!kept) continue;
          text = jsonl ? kept.parts[0]! : `${kept.parts[0]}\n\n`; // paragraphs keep their blank line
        }
        const ids = tokenizer.encode(text, { allowSpecial: false });
        const last = doc.endByte >= size;
        if (jsonl || last) ids.push(tokenizer.eosId); // <|endoftext|> separates documents, as in GPT-2
        if (doc.endByte <= valFrom) train.write(ids);
        else if (doc.startByte >= valFrom || doc.endByte - valFrom >= valFrom - doc.startByte) val.write(ids);
        else if (!last) train.write(ids);
        else {
          const cut = Math.round((ids.length * (valFrom - doc.startByte)) / (doc.endByte - doc.startByte));
          train.write(ids.slice(0, cut));
          val.write(ids.slice(cut));
        }
      }
      if (train.tokens === trainBefore && val.tokens === valBefore) throw new InputError(`${path}: no ${jsonl ? 'rows' : 'text'} to tokenize`);
      if (cfg.val_fraction > 0 && val.tokens === valBefore) log().warn({ path, val_fraction: cfg.val_fraction }, `${path}: too small for a validation split; all of it is training data`);
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
