/**
 * Tokenizer: byte-level BPE (GPT-2 style, trainable) and llama2.c sentencepiece-style BPE: factories,
 * encode/decode and chat rendering. The jobs around it live beside it: bpe.ts (merge table), train.ts
 * (BPE training), hf-json.ts (HF tokenizer.json / tokenizer_config.json), pretokenize.ts (HF pre-tokenizers),
 * chat.ts (Jinja chat templates), streamer.ts (incremental decoding).
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  BYTE_TO_UNICODE,
  bytesKey,
  bytesToByteLevel,
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
import { specFromJSON, specToConfigJSON, specToJSON } from './hf-json.js';
import { GPT2_SPLIT_REGEX_SOURCE, type PreTokenizer, byteLevelPreTokenizer } from './pretokenize.js';
import { BOS, BYTE_PIECE, EOS, UNK, type AddedToken, type TokenizerKind, type TokenizerSpec } from './spec.js';
import { trainByteBpe } from './train.js';
import { TextStreamer, type StreamerOptions } from './streamer.js';

export type { TokenizerKind } from './spec.js';

/** GPT-2 pre-tokenization (same pattern as tiktoken r50k_base). */
export const GPT2_SPLIT_REGEX = new RegExp(GPT2_SPLIT_REGEX_SOURCE, 'gu');

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

  /** Parses the HF tokenizer.json layout (BPE model) and tokenizer_config.json (hf-json.ts). */
  static fromJSON(json: unknown, config?: unknown): Tokenizer {
    return new Tokenizer(specFromJSON(json, config));
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
    return specToJSON(this.spec, this.addBos);
  }

  /** tokenizer_config.json as transformers writes it (model_max_length omitted). */
  toConfigJSON(): object {
    return specToConfigJSON(this.spec, this.addBos, this.chatTemplate);
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
        const cp = ch.codePointAt(0)!;
        for (let k = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; k > 0; k--) charAt.push(ci);
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
