/** Merge table and the merge loop shared by all tokenizer kinds. */

/** Ids must stay below this so (a, b) and (rank, result) pack into one safe integer. */
export const ID_SPACE = 2 ** 21;
/** Positions inside one word; rank * POS_SPACE + pos stays below 2^53. */
const POS_SPACE = 2 ** 32;

export function pairKey(a: number, b: number): number {
  return a * ID_SPACE + b;
}

/** Binary heap ordered by `before` (the element that should pop first). One class for the merge loop and training. */
export class Heap<T> {
  private readonly h: T[] = [];
  constructor(private readonly before: (a: T, b: T) => boolean) {}
  get size(): number {
    return this.h.length;
  }
  push(v: T): void {
    const h = this.h;
    let i = h.length;
    h.push(v);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(v, h[p]!)) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = v;
  }
  pop(): T {
    const h = this.h;
    const top = h[0]!;
    const last = h.pop()!;
    const n = h.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && this.before(h[r]!, h[l]!) ? r : l;
        if (!this.before(h[c]!, last)) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}

/**
 * (left id, right id) -> (priority rank, result id). Lower rank merges first; ties go to
 * the leftmost pair. Several pairs may share a rank (sentencepiece: rank = score of result).
 */
export class MergeTable {
  private readonly table = new Map<number, number>();

  get size(): number {
    return this.table.size;
  }

  /** First registration of a pair wins (it has the better rank when added in rank order). */
  add(a: number, b: number, result: number, rank: number): void {
    const k = pairKey(a, b);
    if (!this.table.has(k)) this.table.set(k, rank * ID_SPACE + result);
  }

  /**
   * Applies merges until none is possible: always the lowest rank, leftmost on ties,
   * one merge at a time (= tiktoken, HF BPE and llama2.c run.c semantics).
   * Linked list + lazy heap keeps long inputs (one sentencepiece "word" can be a whole
   * document) at O(n log n).
   */
  apply(symbols: readonly number[]): number[] {
    const n = symbols.length;
    if (n < 2) return symbols.slice();
    const table = this.table;
    const id = Int32Array.from(symbols);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new Heap<number>((a, b) => a < b);
    const pushPair = (i: number): void => {
      const j = next[i]!;
      if (j < 0) return;
      const m = table.get(id[i]! * ID_SPACE + id[j]!);
      if (m !== undefined) heap.push(Math.floor(m / ID_SPACE) * POS_SPACE + i);
    };
    for (let i = 0; i < n - 1; i++) pushPair(i);

    while (heap.size > 0) {
      const top = heap.pop();
      const rank = Math.floor(top / POS_SPACE);
      const i = top - rank * POS_SPACE;
      if (id[i]! < 0) continue; // absorbed into its left neighbour
      const j = next[i]!;
      if (j < 0) continue;
      // Stale entries are skipped: the pair at i must still merge with this exact rank.
      const m = table.get(id[i]! * ID_SPACE + id[j]!);
      if (m === undefined || Math.floor(m / ID_SPACE) !== rank) continue;
      id[i] = m % ID_SPACE;
      id[j] = -1;
      const k = next[j]!;
      next[i] = k;
      if (k >= 0) prev[k] = i;
      if (prev[i]! >= 0) pushPair(prev[i]!);
      pushPair(i);
    }

    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) out.push(id[i]!);
    return out;
  }
}
