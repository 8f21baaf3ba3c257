/** What a Tokenizer is built from (tokenizer.ts builds it; hf-json.ts reads and writes it as HF files). */

export type TokenizerKind = 'byte_level' | 'sentencepiece';

export const UNK = '<unk>';
export const BOS = '<s>';
export const EOS = '</s>';
/** Sentencepiece byte-fallback pieces: <0x41>. */
export const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

export interface AddedToken {
  id: number;
  content: string;
  special: boolean;
}

/** Everything a Tokenizer is built from; the factories only produce this. */
export interface TokenizerSpec {
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
