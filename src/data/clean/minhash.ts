/**
 * Near-duplicate detection with MinHash + LSH (Broder 1997; datatrove's defaults: 5-word shingles,
 * 14 bands × 8 rows). Streaming: each document is checked against the documents indexed before it and, when
 * it has no near-duplicate, indexed itself — so the first document of a cluster (in input order) is kept,
 * deterministically. The index is bounded: past `maxDocs` the oldest document leaves it (FIFO), so memory is
 * maxDocs × (4·bands·rows + ~60·bands) bytes whatever the corpus size.
 */
import { fmix32, fnv1a, words } from './text.js';

export interface MinHashOptions {
  shingleSize: number;
  bands: number;
  rows: number;
  threshold: number;
  maxDocs: number;
  seed: number;
}

export class MinHashIndex {
  readonly numPerm: number;
  private readonly seeds: Uint32Array;
  private readonly signatures: Uint32Array; // ring buffer, one signature per slot
  private readonly bandKeys: Float64Array; // the band keys of each slot, to unindex it on eviction
  private readonly buckets: Map<number, number>[]; // per band: band key → slot
  private next = 0; // total documents ever indexed; slot = next % maxDocs
  evicted = 0;

  constructor(private readonly o: MinHashOptions) {
    this.numPerm = o.bands * o.rows;
    this.seeds = new Uint32Array(this.numPerm);
    let s = fmix32(o.seed + 0x9e3779b9);
    for (let i = 0; i < this.numPerm; i++) this.seeds[i] = s = fmix32(s + 0x9e3779b9);
    this.signatures = new Uint32Array(o.maxDocs * this.numPerm);
    this.bandKeys = new Float64Array(o.maxDocs * o.bands);
    this.buckets = Array.from({ length: o.bands }, () => new Map());
  }

  /** The MinHash signature of a text: for each permutation, the minimum hash over its word shingles. */
  signature(text: string): Uint32Array {
    const w = words(text);
    const n = this.o.shingleSize;
    const shingles = new Set<number>();
    if (w.length <= n) shingles.add(fnv1a(w.join(' ')));
    else for (let i = 0; i + n <= w.length; i++) shingles.add(fnv1a(w.slice(i, i + n).join(' ')));
    const sig = new Uint32Array(this.numPerm).fill(0xffffffff);
    for (const h of shingles) {
      for (let p = 0; p < this.numPerm; p++) {
        const v = fmix32(h ^ this.seeds[p]!);
        if (v < sig[p]!) sig[p] = v;
      }
    }
    return sig;
  }

  /** Share of equal positions: an unbiased estimate of the Jaccard similarity of the two shingle sets. */
  static similarity(a: Uint32Array, b: Uint32Array, bOffset = 0): number {
    let eq = 0;
    for (let i = 0; i < a.length; i++) if (a[i] === b[bOffset + i]) eq++;
    return eq / a.length;
  }

  private bandKey(sig: Uint32Array, band: number): number {
    // Two 32-bit hashes of the band's rows folded into one exact-in-a-double 53-bit key.
    let h1 = 0x811c9dc5 ^ band, h2 = 0x01000193 + band;
    for (let r = band * this.o.rows; r < (band + 1) * this.o.rows; r++) {
      h1 = fmix32(h1 ^ sig[r]!);
      h2 = fmix32(h2 + sig[r]! * 3);
    }
    return h1 * 2097152 + (h2 & 0x1fffff);
  }

  /**
   * Check a document and index it unless it is a near-duplicate. Returns the estimated similarity to the
   * indexed document it duplicates, or undefined when it is new (and now indexed).
   */
  add(text: string): number | undefined {
    const sig = this.signature(text);
    const keys = Array.from({ length: this.o.bands }, (_, b) => this.bandKey(sig, b));
    const checked = new Set<number>();
    for (let b = 0; b < this.o.bands; b++) {
      const slot = this.buckets[b]!.get(keys[b]!);
      if (slot === undefined || checked.has(slot)) continue;
      checked.add(slot);
      const sim = MinHashIndex.similarity(sig, this.signatures, slot * this.numPerm);
      if (sim >= this.o.threshold) return sim;
    }
    this.insert(sig, keys);
    return undefined;
  }

  private insert(sig: Uint32Array, keys: number[]): void {
    const slot = this.next % this.o.maxDocs;
    if (this.next >= this.o.maxDocs) {
      // Evict the oldest document: remove its band entries that still point at this slot.
      for (let b = 0; b < this.o.bands; b++) {
        const k = this.bandKeys[slot * this.o.bands + b]!;
        if (this.buckets[b]!.get(k) === slot) this.buckets[b]!.delete(k);
      }
      this.evicted++;
    }
    this.signatures.set(sig, slot * this.numPerm);
    for (let b = 0; b < this.o.bands; b++) {
      this.bandKeys[slot * this.o.bands + b] = keys[b]!;
      this.buckets[b]!.set(keys[b]!, slot); // a newer document takes over a shared bucket
    }
    this.next++;
  }

  get size(): number {
    return Math.min(this.next, this.o.maxDocs);
  }
}
