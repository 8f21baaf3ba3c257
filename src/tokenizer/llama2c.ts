/** Reader for llama2.c tokenizer files (tok*.bin). */

export interface Llama2cVocab {
  maxTokenLength: number;
  pieces: Uint8Array[];
  scores: number[];
}

/**
 * Layout (little-endian): int32 max_token_length, then per id 0..vocabSize-1:
 * float32 score, int32 byte length, raw bytes. The vocab size is not stored in the
 * file (it comes from the model header), hence the parameter.
 */
export function parseLlama2cTokenizer(buf: Uint8Array, vocabSize: number): Llama2cVocab {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const need = (o: number, n: number): void => {
    if (o + n > buf.byteLength) {
      throw new Error(`llama2.c tokenizer truncated at byte ${o} (vocabSize ${vocabSize} too large?)`);
    }
  };
  need(0, 4);
  const maxTokenLength = view.getInt32(0, true);
  let o = 4;
  const pieces: Uint8Array[] = [];
  const scores: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    need(o, 8);
    scores.push(view.getFloat32(o, true));
    const len = view.getInt32(o + 4, true);
    o += 8;
    if (len < 0) throw new Error(`llama2.c tokenizer: negative length for token ${i}`);
    need(o, len);
    pieces.push(buf.slice(o, o + len));
    o += len;
  }
  return { maxTokenLength, pieces, scores };
}
