/** Incremental decoding for generate/serve: print token by token, never half a character. */
import { newUtf8Decoder } from './bytes.js';

/** What the streamer needs of a tokenizer (Tokenizer has it; no import back into tokenizer.ts). */
export interface PieceDecoder {
  pieceBytes(id: number, prev: number | undefined, skipSpecial?: boolean): Uint8Array;
  readonly skipSpecialByDefault: boolean;
}

export interface StreamerOptions {
  /** Default as Tokenizer.decode: false for byte_level, true for sentencepiece. */
  skipSpecial?: boolean;
  /**
   * Id that precedes the first pushed id (e.g. the last prompt token). Default: none, i.e.
   * the stream starts at the beginning of the text (sentencepiece then drops the dummy space).
   */
  prevId?: number;
}

export class TextStreamer {
  // TextDecoder in stream mode holds back incomplete UTF-8 sequences for us.
  private readonly decoder = newUtf8Decoder();
  private prev: number | undefined;
  private readonly skipSpecial: boolean;

  constructor(
    private readonly tokenizer: PieceDecoder,
    opts: StreamerOptions = {},
  ) {
    this.prev = opts.prevId;
    this.skipSpecial = opts.skipSpecial ?? tokenizer.skipSpecialByDefault;
  }

  /** Text that became printable with this token (may be ''). */
  push(id: number): string {
    const bytes = this.tokenizer.pieceBytes(id, this.prev, this.skipSpecial);
    this.prev = id;
    return this.decoder.decode(bytes, { stream: true });
  }

  /** Remaining text at the end (an incomplete trailing sequence becomes U+FFFD). */
  flush(): string {
    return this.decoder.decode();
  }
}
