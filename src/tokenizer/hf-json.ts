/**
 * Hugging Face tokenizer files ↔ TokenizerSpec: tokenizer.json (BPE model, normalizer, pre-tokenizer,
 * post-processor, decoder) and tokenizer_config.json (special tokens, add_bos_token, chat_template).
 * Byte-level vocabularies are GPT-2's; sentencepiece-style ones are written in HF's '▁' convention with a
 * BOS post-processor, and read in that convention, the legacy one, or with a Metaspace pre-tokenizer.
 */
import { byteLevelToBytes, utf8Encoder } from './bytes.js';
import { CHATML_TEMPLATE, ENDOFTEXT, IM_END, IM_START } from './chat.js';
import { byteLevelPreTokenizer } from './pretokenize.js';
import { BOS, BYTE_PIECE, EOS, UNK, type AddedToken, type TokenizerKind, type TokenizerSpec } from './spec.js';

/**
 * Parses the HF tokenizer.json layout (BPE model). byte_fallback:true means
 * sentencepiece-style (llama2.c / Llama); otherwise ByteLevel pre-tokenization is required.
 */
export function specFromJSON(json: unknown, config?: unknown): TokenizerSpec {
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

  return {
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
  };
}

/** tokenizer.json in the HF `tokenizers` layout. */
export function specToJSON(s: TokenizerSpec, addBos: boolean): object {
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
  if (addBos) {
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
export function specToConfigJSON(s: TokenizerSpec, addBos: boolean, chatTemplate: string): object {
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
    add_bos_token: addBos,
    add_eos_token: false,
    add_prefix_space: s.kind === 'byte_level' ? s.addPrefixSpace : undefined,
    added_tokens_decoder,
    bos_token: name(s.bosId),
    // Only where the vocabulary has the template's tokens (an empty template means none).
    chat_template: chatTemplate || undefined,
    clean_up_tokenization_spaces: false,
    eos_token: name(s.eosId),
    pad_token: name(s.padId),
    unk_token: s.kind === 'sentencepiece' ? UNK : null,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
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
