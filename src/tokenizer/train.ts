/** Byte-level BPE training with incremental pair counts. */
import { bytesKey, utf8Encoder } from './bytes.js';
import { Heap, ID_SPACE, pairKey } from './bpe.js';

export interface TrainedMerges {
  /** In rank order; ids 0..255 are raw bytes, merged tokens start at 256. */
  merges: Array<[number, number, number]>;
  /** Raw bytes of every id (0..255 bytes, then merged tokens). */
  tokenBytes: Uint8Array[];
}

interface HeapEntry {
  count: number;
  key: number;
}

/** Max count first; ties -> smaller (left id, right id), so training is deterministic. */
function better(x: HeapEntry, y: HeapEntry): boolean {
  return x.count > y.count || (x.count === y.count && x.key < y.key);
}


/**
 * Learns merges until `numTokens` ids exist (256 bytes + merged tokens) or no pair
 * reaches `minFrequency`. Pair counts are updated only for the words that contain the
 * merged pair (pair -> word index), so each merge costs O(affected words), not O(corpus).
 */
export function trainByteBpe(
  wordCounts: ReadonlyMap<string, number>,
  numTokens: number,
  minFrequency: number,
  onProgress?: (merges: number) => void,
): TrainedMerges {
  const tokenBytes: Uint8Array[] = [];
  const idOfBytes = new Map<string, number>();
  for (let b = 0; b < 256; b++) {
    tokenBytes.push(Uint8Array.of(b));
    idOfBytes.set(String.fromCharCode(b), b);
  }

  const words: number[][] = [];
  const counts: number[] = [];
  for (const [w, c] of wordCounts) {
    const bytes = utf8Encoder.encode(w);
    if (bytes.length < 2) continue; // no pairs, nothing to learn
    words.push(Array.from(bytes));
    counts.push(c);
  }

  const pairCounts = new Map<number, number>();
  const where = new Map<number, number[]>(); // pair -> words that (may) contain it
  const noteWhere = (k: number, w: number): void => {
    const list = where.get(k);
    if (list === undefined) where.set(k, [w]);
    else if (list[list.length - 1] !== w) list.push(w);
  };
  for (let w = 0; w < words.length; w++) {
    const word = words[w]!;
    for (let i = 0; i + 1 < word.length; i++) {
      const k = pairKey(word[i]!, word[i + 1]!);
      pairCounts.set(k, (pairCounts.get(k) ?? 0) + counts[w]!);
      noteWhere(k, w);
    }
  }
  const heap = new Heap<HeapEntry>(better);
  for (const [key, count] of pairCounts) heap.push({ count, key });

  const merges: Array<[number, number, number]> = [];
  const minCount = Math.max(1, minFrequency);
  while (tokenBytes.length < numTokens && heap.size > 0) {
    const top = heap.pop();
    // Lazy deletion: an entry is current only if its count still matches.
    if (pairCounts.get(top.key) !== top.count) continue;
    if (top.count < minCount) break;
    const a = Math.floor(top.key / ID_SPACE);
    const b = top.key % ID_SPACE;

    // Two merge paths can spell the same bytes (ab+c vs a+bc): reuse that id, as HF does.
    const merged = new Uint8Array(tokenBytes[a]!.length + tokenBytes[b]!.length);
    merged.set(tokenBytes[a]!);
    merged.set(tokenBytes[b]!, tokenBytes[a]!.length);
    const mk = bytesKey(merged);
    let c = idOfBytes.get(mk);
    if (c === undefined) {
      c = tokenBytes.length;
      tokenBytes.push(merged);
      idOfBytes.set(mk, c);
    }
    merges.push([a, b, c]);

    const delta = new Map<number, number>();
    const addDelta = (k: number, d: number): void => {
      delta.set(k, (delta.get(k) ?? 0) + d);
    };
    for (const w of where.get(top.key) ?? []) {
      const word = words[w]!;
      const out: number[] = [];
      for (let i = 0; i < word.length; i++) {
        if (word[i] === a && i + 1 < word.length && word[i + 1] === b) {
          out.push(c);
          i++;
        } else out.push(word[i]!);
      }
      if (out.length === word.length) continue; // stale index entry
      const cnt = counts[w]!;
      for (let i = 0; i + 1 < word.length; i++) addDelta(pairKey(word[i]!, word[i + 1]!), -cnt);
      for (let i = 0; i + 1 < out.length; i++) {
        const k = pairKey(out[i]!, out[i + 1]!);
        addDelta(k, cnt);
        if (out[i] === c || out[i + 1] === c) noteWhere(k, w);
      }
      words[w] = out;
    }
    where.delete(top.key);
    for (const [k, d] of delta) {
      if (d === 0) continue;
      const n = (pairCounts.get(k) ?? 0) + d;
      if (n > 0) {
        pairCounts.set(k, n);
        heap.push({ count: n, key: k });
      } else pairCounts.delete(k);
    }
    onProgress?.(merges.length);
  }
  return { merges, tokenBytes };
}
