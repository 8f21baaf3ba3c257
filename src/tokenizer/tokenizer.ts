/**
 * Tokenizer: byte-level BPE (GPT-2 style, trainable) and llama2.c sentencepiece-style BPE,
 * both stored in the HF `tokenizers` tokenizer.json layout.
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  BYTE_TO_UNICODE,
  bytesKey,
  bytesToByteLevel,
  byteLevelToBytes,
  concatBytes,
  newUtf8Decoder,
  utf8Encoder,
} from './bytes.js';
import { ID_SPACE, MergeTable } from './bpe.js';
import {
  CHATML_TEMPLATE,
  DEFAULT_SPECIAL_TOKENS,
  ENDOFTEXT,
  IM_END,
  IM_START,
  type ChatMessage,
  type RenderedChat,
  assistantSpans,
  contentSpans,
  renderTemplate,
} from './chat.js';
import { parseLlama2cTokenizer } from './llama2c.js';
import { GPT2_SPLIT_REGEX_SOURCE, type PreTokenizer, byteLevelPreTokenizer } from './pretokenize.js';
import { trainByteBpe } from './train.js';
import { TextStreamer, type StreamerOptions } from './streamer.js';

export type TokenizerKind = 'byte_level' | 'sentencepiece';

/** GPT-2 pre-tokenization (same pattern as tiktoken r50k_base). */
export const GPT2_SPLIT_REGEX = new RegExp(GPT2_SPLIT_REGEX_SOURCE, 'gu');

const UNK = '<unk>';
const BOS = '<s>';
const EOS = '</s>';
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const WORD_CACHE_MAX = 100_000;

export interface TrainOptions {
  vocabSize: number;
  /** Default [<|endoftext|>, <|im_start|>, <|im_end|>]; <|endoftext|> is always included (it is the EOS). */
  specialTokens?: string[];
  /** Stop merging when the best pair occurs fewer times than this (default 2). */
  minFrequency?: number;
  onProgress?: (merges: number) => void;
}

export interface EncodeOptions {
  /** Default true: literal special-token text (e.g. "<|im_start|>") becomes its single id. */
  allowSpecial?: boolean;
  /** Prepend BOS; a no-op for tokenizers without one (byte-level). */
  addBos?: boolean;
}

export interface DecodeOptions {
  /**
   * Drop special tokens. Default: false for byte_level (so decode(encode(s)) === s even when
   * s contains special-token text), true for sentencepiece (run.c never prints <s>/</s>).
   */
  skipSpecial?: boolean;
}

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
}

/** Everything a Tokenizer is built from; the factories only produce this. */
interface TokenizerSpec {
  kind: TokenizerKind;
  /** Token string per id as written in tokenizer.json (added tokens: their content). */
  vocab: string[];
  /** Raw bytes per id, used for decoding. */
  tokenBytes: Uint8Array[];
  /** [left, right, result] in file order, with the priority of each. */
  merges: Array<[number, number, number]>;
  mergeRanks: number[];
  added: AddedToken[];
  bosId: number | undefined;
  eosId: number;
  padId: number;
  chatTemplate: string;
  /** byte_level: HF ByteLevel add_prefix_space. sentencepiece: the dummy-prefix space. */
  addPrefixSpace: boolean;
  /** sentencepiece only: the char the vocab uses for a space (' ' for llama2.c imports, '▁' for HF Llama files). */
  spaceSymbol: string;
  /**
   * sentencepiece only: a Metaspace pre-tokenizer (newer HF Llama files) instead of the legacy normalizers.
   * Its prefix space is skipped when the piece already starts with a space; "first" adds it to the first
   * piece of the text only (not after a special token).
   */
  metaspace?: 'always' | 'first' | undefined;
  /** The tokenizer puts BOS in front of every encoded text by default (HF: the post-processor / add_bos_token). */
  addBos: boolean;
  /** byte_level only: a pre_tokenizer / normalizer other than GPT-2's plain ByteLevel (kept as JSON, written back as is). */
  preTokenizerJson?: { pre_tokenizer: unknown; normalizer: unknown } | undefined;
  /** HF BPE ignore_merges (Llama-3): a pre-token that is itself in the vocabulary is one token. */
  ignoreMerges?: boolean | undefined;
}

export class Tokenizer {
  readonly kind: TokenizerKind;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number;
  readonly padId: number;
  /** Whether the model expects BOS at the start of a text (prompts get it; HF's post-processor adds it). */
  readonly addBos: boolean;
  /** Jinja chat template (tokenizer_config.json's chat_template); '' when the vocabulary has no chat markup. */
  chatTemplate: string;

  private readonly spec: TokenizerSpec;
  private readonly tokenIds = new Map<string, number>();
  private readonly mergeTable = new MergeTable();
  private readonly specialIds = new Set<number>();
  private readonly addedIds = new Map<string, number>();
  private readonly addedRegex: RegExp | undefined;
  /** byte_level: byte -> id. sentencepiece: byte-fallback id (<0xXX>), -1 if absent. */
  private readonly byteIds = new Int32Array(256).fill(-1);
  /** sentencepiece: single-code-point pieces, keyed by the input char. */
  private readonly charIds = new Map<string, number>();
  private readonly unkId: number | undefined;
  private readonly wordCache = new Map<string, number[]>();
  private readonly pre: PreTokenizer | undefined;

  private constructor(spec: TokenizerSpec) {
    this.spec = spec;
    this.kind = spec.kind;
    this.vocabSize = spec.vocab.length;
    this.bosId = spec.bosId;
    this.eosId = spec.eosId;
    this.padId = spec.padId;
    this.addBos = spec.addBos && spec.bosId !== undefined;
    this.chatTemplate = spec.chatTemplate;
    if (this.vocabSize >= ID_SPACE) throw new Error(`vocab too large (${this.vocabSize})`);

    spec.vocab.forEach((tok, id) => {
      if (!this.tokenIds.has(tok)) this.tokenIds.set(tok, id);
    });
    for (const t of spec.added) {
      this.tokenIds.set(t.content, t.id);
      this.addedIds.set(t.content, t.id);
      if (t.special) this.specialIds.add(t.id);
    }
    spec.merges.forEach(([a, b, c], i) => this.mergeTable.add(a, b, c, spec.mergeRanks[i]!));

    if (spec.added.length > 0) {
      // Longest first so that overlapping specials resolve to the longest match.
      const alts = spec.added
        .map((t) => t.content)
        .sort((x, y) => y.length - x.length)
        .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
      this.addedRegex = new RegExp(alts.join('|'), 'g');
    }

    this.pre = spec.preTokenizerJson ? byteLevelPreTokenizer(spec.preTokenizerJson.pre_tokenizer, spec.preTokenizerJson.normalizer) : undefined;
    if (spec.kind === 'byte_level') {
      for (let b = 0; b < 256; b++) {
        const id = this.tokenIds.get(BYTE_TO_UNICODE[b]!);
        if (id === undefined) throw new Error(`byte-level vocab lacks the token for byte ${b}`);
        this.byteIds[b] = id;
      }
    } else {
      this.unkId = this.tokenIds.get(UNK);
      spec.vocab.forEach((tok, id) => {
        if (this.addedIds.has(tok)) return;
        const m = BYTE_PIECE.exec(tok);
        if (m) {
          const b = parseInt(m[1]!, 16);
          if (this.byteIds[b]! < 0) this.byteIds[b] = id;
          return;
        }
        const text = tok.replaceAll(spec.spaceSymbol, ' ');
        const cps = [...text];
        if (cps.length === 1 && !this.charIds.has(cps[0]!)) this.charIds.set(cps[0]!, id);
      });
    }
  }

  // ---------------------------------------------------------------- factories

  /** Trains a byte-level BPE. Ids: 0..255 bytes, then merges, then the special tokens. */
  static train(texts: Iterable<string>, opts: TrainOptions): Tokenizer {
    const specials = [...(opts.specialTokens ?? DEFAULT_SPECIAL_TOKENS)];
    if (!specials.includes(ENDOFTEXT)) specials.unshift(ENDOFTEXT);
    if (new Set(specials).size !== specials.length) throw new Error('duplicate special tokens');
    const specialRe = new RegExp(
      specials.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'),
      'g',
    );

    const wordCounts = new Map<string, number>();
    for (const text of texts) {
      // Special-token text in the corpus is a separator, not something to learn merges from.
      for (const part of text.split(specialRe)) {
        for (const m of part.matchAll(GPT2_SPLIT_REGEX)) {
          wordCounts.set(m[0], (wordCounts.get(m[0]) ?? 0) + 1);
        }
      }
    }
    const numTokens = Math.max(256, opts.vocabSize - specials.length);
    const { merges, tokenBytes } = trainByteBpe(
      wordCounts,
      numTokens,
      opts.minFrequency ?? 2,
      opts.onProgress,
    );

    const vocab = tokenBytes.map(bytesToByteLevel);
    const allBytes = tokenBytes.slice();
    const added: AddedToken[] = specials.map((content) => {
      const id = vocab.length;
      vocab.push(content);
      allBytes.push(utf8Encoder.encode(content));
      return { id, content, special: true };
    });
    const eosId = added[specials.indexOf(ENDOFTEXT)]!.id;
    return new Tokenizer({
      kind: 'byte_level',
      vocab,
      tokenBytes: allBytes,
      merges,
      mergeRanks: merges.map((_, i) => i),
      added,
      bosId: undefined,
      eosId,
      padId: eosId,
      chatTemplate: specials.includes(IM_START) && specials.includes(IM_END) ? CHATML_TEMPLATE : '',
      addPrefixSpace: false,
      spaceSymbol: ' ',
      addBos: false,
    });
  }

  /**
   * Builds a byte-level tokenizer from tiktoken-style ranks (index = rank = id), e.g.
   * gpt-tokenizer's r50k_base (GPT-2). Entries are UTF-8 strings or raw byte arrays.
   * Merges are derived the way HF converts tiktoken files: the split of each token
   * that rank-ordered BPE over lower ranks produces.
   */
  static fromTiktokenRanks(
    ranks: ReadonlyArray<string | ArrayLike<number>>,
    specialTokens: Record<string, number> = { [ENDOFTEXT]: ranks.length },
  ): Tokenizer {
    const tokenBytes = ranks.map((r) => (typeof r === 'string' ? utf8Encoder.encode(r) : Uint8Array.from(r)));
    const rankOf = new Map<string, number>();
    tokenBytes.forEach((b, i) => rankOf.set(bytesKey(b), i));

    const merges: Array<[number, number, number]> = [];
    tokenBytes.forEach((bytes, r) => {
      if (bytes.length < 2) return;
      // tiktoken BPE restricted to ranks below r; must end in exactly two parts.
      const parts = Array.from(bytes, (b) => String.fromCharCode(b));
      for (;;) {
        let best = -1;
        let bestRank = r;
        for (let i = 0; i + 1 < parts.length; i++) {
          const pr = rankOf.get(parts[i]! + parts[i + 1]!);
          if (pr !== undefined && pr < bestRank) {
            bestRank = pr;
            best = i;
          }
        }
        if (best < 0) break;
        parts.splice(best, 2, parts[best]! + parts[best + 1]!);
      }
      if (parts.length !== 2) throw new Error(`rank ${r} is not reachable by a single merge`);
      merges.push([rankOf.get(parts[0]!)!, rankOf.get(parts[1]!)!, r]);
    });

    const vocab = tokenBytes.map(bytesToByteLevel);
    const added: AddedToken[] = [];
    for (const [content, id] of Object.entries(specialTokens)) {
      while (vocab.length <= id) {
        vocab.push('');
        tokenBytes.push(new Uint8Array(0));
      }
      vocab[id] = content;
      tokenBytes[id] = utf8Encoder.encode(content);
      added.push({ id, content, special: true });
    }
    const eosId = specialTokens[ENDOFTEXT] ?? added[0]?.id;
    if (eosId === undefined) throw new Error('fromTiktokenRanks needs an end-of-text special token');
    return new Tokenizer({
      kind: 'byte_level',
      vocab,
      tokenBytes,
      merges,
      mergeRanks: merges.map(([, , r]) => r),
      added,
      bosId: undefined,
      eosId,
      padId: eosId,
      chatTemplate: IM_START in specialTokens && IM_END in specialTokens ? CHATML_TEMPLATE : '',
      addPrefixSpace: false,
      spaceSymbol: ' ',
      addBos: false,
    });
  }

  /**
   * llama2.c tok*.bin. Ids 0/1/2 become <unk>/<s>/</s>; pieces keep their real spaces.
   * Merge priority = score of the merged piece (higher first, leftmost on ties), like run.c.
   */
  static fromLlama2c(buf: Uint8Array, vocabSize: number): Tokenizer {
    const { pieces, scores } = parseLlama2cTokenizer(buf, vocabSize);
    if (vocabSize < 3) throw new Error('llama2.c vocab needs at least <unk>, <s>, </s>');
    const specialNames = [UNK, BOS, EOS];
    const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
    const vocab = pieces.map((p, id) => {
      if (id < 3) return specialNames[id]!;
      try {
        return decoder.decode(p);
      } catch {
        throw new Error(`llama2.c token ${id} is not valid UTF-8`);
      }
    });
    const tokenBytes = pieces.map((p, id) => {
      if (id < 3) return utf8Encoder.encode(specialNames[id]!);
      const m = BYTE_PIECE.exec(vocab[id]!);
      return m ? Uint8Array.of(parseInt(m[1]!, 16)) : p;
    });

    // Mergeable pieces: everything but specials and <0xXX> byte tokens (run.c never
    // finds "<0x41><0x42>" in the vocab, so byte tokens never merge).
    const pieceId = new Map<string, number>();
    vocab.forEach((tok, id) => {
      if (id >= 3 && !BYTE_PIECE.test(tok) && !pieceId.has(bytesKey(tokenBytes[id]!))) {
        pieceId.set(bytesKey(tokenBytes[id]!), id);
      }
    });
    // Dense rank of scores, best first: equal scores share a rank (run.c: leftmost wins).
    const distinct = [...new Set([...pieceId.values()].map((id) => scores[id]!))].sort((x, y) => y - x);
    const scoreRank = new Map(distinct.map((s, i) => [s, i] as const));
    const merges: Array<[number, number, number, number]> = [];
    for (const [key, c] of pieceId) {
      for (let i = 1; i < key.length; i++) {
        const a = pieceId.get(key.slice(0, i));
        const b = pieceId.get(key.slice(i));
        if (a !== undefined && b !== undefined) merges.push([a, b, c, scoreRank.get(scores[c]!)!]);
      }
    }
    merges.sort((x, y) => x[3] - y[3] || x[2] - y[2] || x[0] - y[0] || x[1] - y[1]);

    return new Tokenizer({
      kind: 'sentencepiece',
      vocab,
      tokenBytes,
      merges: merges.map(([a, b, c]) => [a, b, c]),
      mergeRanks: merges.map((m) => m[3]),
      added: specialNames.map((content, id) => ({ id, content, special: true })),
      bosId: 1,
      eosId: 2,
      padId: 2,
      chatTemplate: '', // no chat markup in the vocabulary (setupChatFormat adds ChatML)
      addPrefixSpace: true,
      spaceSymbol: ' ',
      addBos: true,
    });
  }

  /** Reads dir/tokenizer.json and, if present, dir/tokenizer_config.json. */
  static load(dir: string): Tokenizer {
    const json: unknown = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    const cfgPath = join(dir, 'tokenizer_config.json');
    const config: unknown = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, 'utf8')) : undefined;
    return Tokenizer.fromJSON(json, config);
  }

  /**
   * Parses the HF tokenizer.json layout (BPE model). byte_fallback:true means
   * sentencepiece-style (llama2.c / Llama); otherwise ByteLevel pre-tokenization is required.
   */
  static fromJSON(json: unknown, config?: unknown): Tokenizer {
    const root = asRecord(json, 'tokenizer.json');
    const model = asRecord(root['model'], 'tokenizer.json model');
    if (model['type'] !== 'BPE') throw new Error(`unsupported tokenizer model type ${String(model['type'])}`);
    const kind: TokenizerKind = model['byte_fallback'] === true ? 'sentencepiece' : 'byte_level';

    const vocabObj = asRecord(model['vocab'], 'model.vocab');
    const vocab: string[] = [];
    for (const [tok, id] of Object.entries(vocabObj)) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new Error(`bad id for token ${tok}`);
      vocab[id] = tok;
    }
    const added: AddedToken[] = [];
    for (const t of Array.isArray(root['added_tokens']) ? root['added_tokens'] : []) {
      const r = asRecord(t, 'added token');
      if (typeof r['id'] !== 'number' || typeof r['content'] !== 'string') throw new Error('bad added token');
      added.push({ id: r['id'], content: r['content'], special: r['special'] !== false });
      vocab[r['id']] = r['content'];
    }
    for (let i = 0; i < vocab.length; i++) {
      if (vocab[i] === undefined) throw new Error(`tokenizer.json has no token for id ${i}`);
    }
    const addedById = new Map(added.map((t) => [t.id, t] as const));

    let addPrefixSpace = false;
    let spaceSymbol = ' ';
    let metaspace: 'always' | 'first' | undefined;
    let preTokenizerJson: TokenizerSpec['preTokenizerJson'];
    if (kind === 'byte_level') {
      const pre = root['pre_tokenizer'] as Record<string, unknown> | null | undefined;
      const norm = root['normalizer'] ?? null;
      if (pre && pre['type'] === 'ByteLevel' && pre['use_regex'] !== false && norm === null) {
        addPrefixSpace = pre['add_prefix_space'] === true; // GPT-2's own: the fast path
      } else {
        preTokenizerJson = { pre_tokenizer: pre, normalizer: norm };
        byteLevelPreTokenizer(pre, norm); // fail here, naming what is unsupported
      }
    } else {
      // Our files: Prepend " ". HF Llama files: Prepend "▁" + Replace " " -> "▁".
      const norms = normalizerList(root['normalizer']);
      for (const n of norms) {
        if (n['type'] === 'Prepend') addPrefixSpace = true;
        const pat = n['pattern'] as Record<string, unknown> | undefined;
        if (n['type'] === 'Replace' && pat?.['String'] === ' ' && typeof n['content'] === 'string') {
          spaceSymbol = n['content'];
        }
      }
      // Newer HF Llama files: no normalizer, a Metaspace pre-tokenizer instead.
      const pre = root['pre_tokenizer'] as Record<string, unknown> | null | undefined;
      if (pre && pre['type'] === 'Metaspace') {
        spaceSymbol = typeof pre['replacement'] === 'string' ? pre['replacement'] : '\u2581';
        const scheme = pre['prepend_scheme'] ?? (pre['add_prefix_space'] === false ? 'never' : 'always');
        addPrefixSpace = scheme !== 'never';
        metaspace = scheme === 'first' ? 'first' : 'always';
      } else if (pre) {
        throw new Error(`sentencepiece-style BPE: pre_tokenizer ${String(pre['type'])} is not supported (none or Metaspace)`);
      }
    }

    const tokenBytes = vocab.map((tok, id) => {
      const a = addedById.get(id);
      if (a) return utf8Encoder.encode(a.content);
      if (kind === 'byte_level') {
        const b = byteLevelToBytes(tok);
        if (!b) throw new Error(`token ${JSON.stringify(tok)} is not byte-level encoded`);
        return b;
      }
      const m = BYTE_PIECE.exec(tok);
      return m ? Uint8Array.of(parseInt(m[1]!, 16)) : utf8Encoder.encode(tok.replaceAll(spaceSymbol, ' '));
    });

    const tokenIds = new Map<string, number>();
    vocab.forEach((t, id) => {
      if (!tokenIds.has(t)) tokenIds.set(t, id);
    });
    const merges: Array<[number, number, number]> = [];
    const mergeRanks: number[] = [];
    const resultRank = new Map<number, number>();
    const rawMerges = Array.isArray(model['merges']) ? (model['merges'] as unknown[]) : [];
    rawMerges.forEach((m, i) => {
      let pair: [string, string];
      if (typeof m === 'string') {
        const sp = m.indexOf(' ', 1); // ' ' can't start a byte-level token, so the first space splits
        if (sp < 0) throw new Error(`bad merge ${JSON.stringify(m)}`);
        pair = [m.slice(0, sp), m.slice(sp + 1)];
      } else if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') {
        pair = [m[0], m[1]];
      } else throw new Error(`bad merge at ${i}`);
      const a = tokenIds.get(pair[0]);
      const b = tokenIds.get(pair[1]);
      const c = tokenIds.get(pair[0] + pair[1]);
      if (a === undefined || b === undefined || c === undefined) {
        throw new Error(`merge ${JSON.stringify(pair)} refers to unknown tokens`);
      }
      merges.push([a, b, c]);
      if (kind === 'sentencepiece') {
        // Sentencepiece priority belongs to the merged piece: all splits of one piece share it.
        if (!resultRank.has(c)) resultRank.set(c, resultRank.size);
        mergeRanks.push(resultRank.get(c)!);
      } else mergeRanks.push(i);
    });

    const cfg = config === undefined || config === null ? {} : asRecord(config, 'tokenizer_config.json');
    const idOf = (key: string): number | undefined | null => {
      const v = cfg[key];
      if (v === undefined) return undefined;
      if (v === null) return null;
      const content = typeof v === 'string' ? v : (asRecord(v, key)['content'] as string | undefined);
      const id = content === undefined ? undefined : tokenIds.get(content);
      if (id === undefined) throw new Error(`${key} ${JSON.stringify(v)} is not in the vocab`);
      return id;
    };
    const bos = idOf('bos_token');
    const bosId = bos === null ? undefined : (bos ?? (kind === 'sentencepiece' ? tokenIds.get(BOS) : undefined));
    const eosId =
      idOf('eos_token') ?? tokenIds.get(kind === 'sentencepiece' ? EOS : ENDOFTEXT) ?? added.find((t) => t.special)?.id;
    if (eosId === undefined) throw new Error('cannot determine the EOS token');
    const padId = idOf('pad_token') ?? eosId;
    const hasChatML = addedById.size > 0 && added.some((t) => t.content === IM_START) && added.some((t) => t.content === IM_END);
    let chatTemplate = hasChatML ? CHATML_TEMPLATE : '';
    const ct = cfg['chat_template'];
    if (typeof ct === 'string') chatTemplate = ct;
    else if (Array.isArray(ct)) {
      const def = ct.find((t) => (t as Record<string, unknown>)?.['name'] === 'default') as
        | Record<string, unknown>
        | undefined;
      if (typeof def?.['template'] === 'string') chatTemplate = def['template'];
    }

    return new Tokenizer({
      kind,
      vocab,
      tokenBytes,
      merges,
      mergeRanks,
      added,
      bosId,
      eosId,
      padId,
      chatTemplate,
      addPrefixSpace,
      spaceSymbol,
      metaspace,
      preTokenizerJson,
      ignoreMerges: model['ignore_merges'] === true,
      addBos: bosId !== undefined && (typeof cfg['add_bos_token'] === 'boolean' ? cfg['add_bos_token'] : postProcessorAddsBos(root['post_processor'], vocab[bosId]!)),
    });
  }

  /**
   * A copy with `tokens` added as special tokens at the end of the vocabulary (those already present are
   * kept) and `chatTemplate` as its template: TRL's setup_chat_format on the tokenizer side.
   */
  withSpecialTokens(tokens: readonly string[], chatTemplate: string): Tokenizer {
    const s = this.spec;
    const vocab = s.vocab.slice(), tokenBytes = s.tokenBytes.slice(), added = s.added.slice();
    for (const content of tokens) {
      if (this.tokenIds.has(content)) continue;
      added.push({ id: vocab.length, content, special: true });
      vocab.push(content);
      tokenBytes.push(utf8Encoder.encode(content));
    }
    return new Tokenizer({ ...s, vocab, tokenBytes, added, chatTemplate });
  }

  // ---------------------------------------------------------------- serialization

  save(dir: string): void {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(this.toJSON(), null, 2) + '\n');
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(this.toConfigJSON(), null, 2) + '\n');
  }

  /** tokenizer.json in the HF `tokenizers` layout. */
  toJSON(): object {
    const s = this.spec;
    // fromEntries + Set, not `tok in obj`: tokens like "constructor" must not hit Object.prototype.
    const seen = new Set<string>();
    let vocab: Record<string, number> = Object.fromEntries(
      s.vocab.flatMap((tok, id) => (seen.has(tok) ? [] : (seen.add(tok), [[tok, id] as const]))),
    );
    const added_tokens = s.added.map((t) => ({
      id: t.id,
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: t.special,
    }));
    const byteLevel = s.kind === 'byte_level';
    // Sentencepiece vocabularies are written in HF's '▁' convention whatever they use in memory, so no
    // piece holds a real space and merges are the usual "left right" strings.
    const sp = '\u2581';
    const addedSet = new Set(s.added.map((t) => t.id));
    const piece = (id: number): string => (byteLevel || addedSet.has(id) ? s.vocab[id]! : s.vocab[id]!.replaceAll(s.spaceSymbol, sp));
    if (!byteLevel) {
      vocab = Object.fromEntries(
        (() => {
          const seen2 = new Set<string>();
          return s.vocab.flatMap((_, id) => {
            const tok = piece(id);
            return seen2.has(tok) ? [] : (seen2.add(tok), [[tok, id] as const]);
          });
        })(),
      );
    }
    const merges = s.merges.map(([a, b]) => `${piece(a)} ${piece(b)}`);
    const model = {
      type: 'BPE',
      dropout: null,
      unk_token: byteLevel ? null : UNK,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: !byteLevel,
      byte_fallback: !byteLevel,
      ...(s.ignoreMerges ? { ignore_merges: true } : {}),
      vocab,
      merges,
    };
    if (byteLevel) {
      return {
        version: '1.0',
        truncation: null,
        padding: null,
        added_tokens,
        normalizer: s.preTokenizerJson?.normalizer ?? null,
        pre_tokenizer: s.preTokenizerJson?.pre_tokenizer ?? { type: 'ByteLevel', add_prefix_space: s.addPrefixSpace, trim_offsets: true, use_regex: true },
        post_processor: null,
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
        model,
      };
    }
    // As HF's Llama files: legacy normalizers (Prepend + Replace), or Metaspace when only the first
    // piece gets the prefix space; BOS from a TemplateProcessing post-processor.
    const normalizers: object[] = [];
    if (s.addPrefixSpace) normalizers.push({ type: 'Prepend', prepend: sp });
    normalizers.push({ type: 'Replace', pattern: { String: ' ' }, content: sp });
    const metaspace = s.metaspace ? { type: 'Metaspace', replacement: sp, prepend_scheme: s.addPrefixSpace ? s.metaspace : 'never', split: false } : null;
    const decoders: object[] = [{ type: 'Replace', pattern: { String: sp }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }];
    if (s.addPrefixSpace) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
    let post_processor: object | null = null;
    if (this.addBos) {
      const bos = s.vocab[s.bosId!]!;
      const special = { SpecialToken: { id: bos, type_id: 0 } };
      post_processor = {
        type: 'TemplateProcessing',
        single: [special, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [special, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [s.bosId], tokens: [bos] } },
      };
    }
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens,
      normalizer: metaspace ? null : { type: 'Sequence', normalizers },
      pre_tokenizer: metaspace,
      post_processor,
      decoder: { type: 'Sequence', decoders },
      model,
    };
  }

  /** tokenizer_config.json as transformers writes it (model_max_length omitted). */
  toConfigJSON(): object {
    const s = this.spec;
    const name = (id: number | undefined): string | null => (id === undefined ? null : s.vocab[id]!);
    const added_tokens_decoder: Record<string, object> = {};
    for (const t of s.added) {
      added_tokens_decoder[String(t.id)] = {
        content: t.content,
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: t.special,
      };
    }
    return {
      add_bos_token: this.addBos,
      add_eos_token: false,
      add_prefix_space: s.kind === 'byte_level' ? s.addPrefixSpace : undefined,
      added_tokens_decoder,
      bos_token: name(s.bosId),
      // Only where the vocabulary has the template's tokens (an empty template means none).
      chat_template: this.chatTemplate || undefined,
      clean_up_tokenization_spaces: false,
      eos_token: name(s.eosId),
      pad_token: name(s.padId),
      unk_token: s.kind === 'sentencepiece' ? UNK : null,
      tokenizer_class: 'PreTrainedTokenizerFast',
    };
  }

  // ---------------------------------------------------------------- encode / decode

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const out: number[] = [];
    if (opts.addBos && this.bosId !== undefined) out.push(this.bosId);
    if (opts.allowSpecial === false || this.addedRegex === undefined) {
      this.encodeOrdinary(text, out, true);
      return out;
    }
    let last = 0;
    for (const m of text.matchAll(this.addedRegex)) {
      this.encodeOrdinary(text.slice(last, m.index), out, last === 0);
      out.push(this.addedIds.get(m[0])!);
      last = m.index + m[0].length;
    }
    this.encodeOrdinary(text.slice(last), out, last === 0);
    return out;
  }

  /** Text without special-token handling; each call is one HF "split" (gets the prefix space). */
  private encodeOrdinary(text: string, out: number[], first: boolean): void {
    if (text.length === 0) return;
    if (this.kind === 'sentencepiece') {
      // run.c: dummy-prefix space, code points -> pieces or <0xXX> byte fallback, then merges.
      const ms = this.spec.metaspace;
      const prefix = this.spec.addPrefixSpace && (!ms || (!text.startsWith(' ') && (first || ms === 'always')));
      const s = prefix ? ' ' + text : text;
      const symbols: number[] = [];
      for (const ch of s) {
        const id = this.charIds.get(ch);
        if (id !== undefined) {
          symbols.push(id);
          continue;
        }
        for (const b of utf8Encoder.encode(ch)) {
          const bid = this.byteIds[b]!;
          if (bid >= 0) symbols.push(bid);
          else if (this.unkId !== undefined) symbols.push(this.unkId);
          else throw new Error(`no token for byte ${b}`);
        }
      }
      for (const id of this.mergeTable.apply(symbols)) out.push(id);
      return;
    }
    if (this.pre) {
      for (const w of this.pre.split(this.pre.normalize(text))) for (const id of this.encodeWord(w)) out.push(id);
      return;
    }
    const s = this.spec.addPrefixSpace && !text.startsWith(' ') ? ' ' + text : text;
    for (const m of s.matchAll(GPT2_SPLIT_REGEX)) {
      for (const id of this.encodeWord(m[0])) out.push(id);
    }
  }

  private encodeWord(word: string): number[] {
    let ids = this.wordCache.get(word);
    if (ids !== undefined) return ids;
    const bytes = utf8Encoder.encode(word);
    const whole = this.spec.ignoreMerges ? this.tokenIds.get(bytesToByteLevel(bytes)) : undefined;
    if (whole !== undefined && !this.addedIds.has(bytesToByteLevel(bytes))) return [whole];
    const symbols = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) symbols[i] = this.byteIds[bytes[i]!]!;
    ids = this.mergeTable.apply(symbols);
    if (this.wordCache.size >= WORD_CACHE_MAX) this.wordCache.clear();
    this.wordCache.set(word, ids);
    return ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const parts: Uint8Array[] = [];
    let prev: number | undefined;
    for (const id of ids) {
      parts.push(this.pieceBytes(id, prev, opts.skipSpecial ?? this.skipSpecialByDefault));
      prev = id;
    }
    return newUtf8Decoder().decode(concatBytes(parts));
  }

  /**
   * Raw bytes printed for `id` when it follows `prev` (undefined = start of text).
   * Sentencepiece drops the dummy-prefix space at the start and after BOS (run.c).
   */
  pieceBytes(id: number, prev: number | undefined, skipSpecial = false): Uint8Array {
    const bytes = this.spec.tokenBytes[id];
    if (bytes === undefined || !Number.isInteger(id)) throw new RangeError(`token id ${id} out of range`);
    if (skipSpecial && this.specialIds.has(id)) return new Uint8Array(0);
    if (
      this.kind === 'sentencepiece' &&
      this.spec.addPrefixSpace &&
      (prev === undefined || prev === this.bosId) &&
      bytes[0] === 0x20
    ) {
      return bytes.subarray(1);
    }
    return bytes;
  }

  get skipSpecialByDefault(): boolean {
    return this.kind === 'sentencepiece';
  }

  /** Token-by-token decoding that never emits half a UTF-8 character. */
  streamer(opts: StreamerOptions = {}): TextStreamer {
    return new TextStreamer(this, opts);
  }

  idToToken(id: number): string {
    const t = this.spec.vocab[id];
    if (t === undefined) throw new RangeError(`token id ${id} out of range`);
    return t;
  }

  tokenToId(tok: string): number | undefined {
    return this.tokenIds.get(tok);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Added/special tokens as content -> id. */
  specialTokens(): Map<string, number> {
    return new Map(this.addedIds);
  }

  // ---------------------------------------------------------------- chat

  /** The special tokens a chat template sees by name, as transformers passes them (only those set). */
  templateSpecialTokens(): Record<string, string> {
    const s = this.spec;
    const out: Record<string, string> = {};
    const put = (k: string, id: number | undefined) => {
      if (id !== undefined) out[k] = s.vocab[id]!;
    };
    put('bos_token', s.bosId);
    put('eos_token', s.eosId);
    put('pad_token', s.padId);
    put('unk_token', this.unkId);
    return out;
  }

  /**
   * Renders messages with the tokenizer's chat template (Jinja, as apply_chat_template) and tokenizes the
   * whole text, as apply_chat_template(tokenize=True) does. trainMask is 1 on the tokens of each assistant
   * turn — its content and the end-of-turn token (ChatML: <|im_end|>) — and 0 elsewhere (role headers,
   * the newline after <|im_end|>, system/user turns, the generation prompt). Special-token text inside a
   * message stays plain text, so users cannot inject control tokens.
   */
  renderChat(messages: readonly ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): RenderedChat {
    if (!this.chatTemplate) {
      throw new Error(`renderChat: the tokenizer has no chat template (no ${IM_START}/${IM_END} tokens); add them with setupChatFormat (sft and lora do)`);
    }
    for (const msg of messages) {
      if (msg.role !== 'system' && msg.role !== 'user' && msg.role !== 'assistant') throw new Error(`unknown chat role ${String(msg.role)}`);
    }
    const specials = this.templateSpecialTokens();
    const render = (msgs: readonly ChatMessage[], gen: boolean) => renderTemplate(this.chatTemplate, msgs, gen, specials);
    const text = render(messages, Boolean(opts.addGenerationPrompt));
    const { ids, starts } = this.encodeWithOffsets(text, contentSpans(messages, text));
    const specialTexts = this.spec.added.filter((t) => t.special).map((t) => t.content);
    const train = assistantSpans(render, messages, text, specialTexts);
    const trainMask = starts.map((at) => (train.some(([a, b]) => at >= a && at < b) ? 1 : 0));
    return { text, ids, trainMask };
  }

  /**
   * encode(text) with the character offset where each token starts; special-token text inside a
   * `literal` range is encoded as ordinary text.
   */
  private encodeWithOffsets(text: string, literal: ReadonlyArray<[number, number]>): { ids: number[]; starts: number[] } {
    const ids: number[] = [], starts: number[] = [];
    const pieces: Array<[number, number, number | undefined]> = [];
    let last = 0;
    if (this.addedRegex) {
      for (const m of text.matchAll(this.addedRegex)) {
        const a = m.index, b = a + m[0].length;
        if (literal.some(([s, e]) => a < e && b > s)) continue;
        if (a > last) pieces.push([last, a, undefined]);
        pieces.push([a, b, this.addedIds.get(m[0])]);
        last = b;
      }
    }
    if (last < text.length) pieces.push([last, text.length, undefined]);
    for (const [a, b, id] of pieces) {
      if (id !== undefined) {
        ids.push(id);
        starts.push(a);
        continue;
      }
      const seg = text.slice(a, b);
      const segIds: number[] = [];
      this.encodeOrdinary(seg, segIds, a === 0);
      // Byte offset → character offset within the segment.
      const charAt: number[] = [];
      let ci = 0;
      for (const ch of seg) {
        for (let k = utf8Encoder.encode(ch).length; k > 0; k--) charAt.push(ci);
        ci += ch.length;
      }
      const total = segIds.reduce((nb, t) => nb + this.spec.tokenBytes[t]!.length, 0);
      let byte = charAt.length - total; // -1 when a prefix space was added
      for (const t of segIds) {
        ids.push(t);
        starts.push(a + (byte <= 0 ? 0 : byte >= charAt.length ? seg.length : charAt[byte]!));
        byte += this.spec.tokenBytes[t]!.length;
      }
    }
    return { ids, starts };
  }
}

function asRecord(x: unknown, what: string): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new Error(`${what}: expected an object`);
  return x as Record<string, unknown>;
}

/** Whether a post_processor (TemplateProcessing, possibly inside a Sequence) puts `bos` first. */
function postProcessorAddsBos(pp: unknown, bos: string): boolean {
  if (typeof pp !== 'object' || pp === null) return false;
  const r = pp as Record<string, unknown>;
  if (r['type'] === 'Sequence' && Array.isArray(r['processors'])) return r['processors'].some((p) => postProcessorAddsBos(p, bos));
  if (r['type'] !== 'TemplateProcessing' || !Array.isArray(r['single'])) return false;
  const first = r['single'][0] as Record<string, Record<string, unknown>> | undefined;
  return first?.['SpecialToken']?.['id'] === bos;
}

function normalizerList(n: unknown): Array<Record<string, unknown>> {
  if (n === null || n === undefined) return [];
  const r = asRecord(n, 'normalizer');
  if (r['type'] === 'Sequence' && Array.isArray(r['normalizers'])) {
    return r['normalizers'].map((x) => asRecord(x, 'normalizer'));
  }
  return [r];
}
