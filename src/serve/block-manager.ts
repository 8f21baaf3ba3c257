/**
 * The paged KV cache's bookkeeping (vLLM's block manager): a pool of `numBlocks` fixed-size blocks, each
 * holding the keys/values of `blockSize` consecutive positions of one sequence. A sequence owns a block
 * table (logical block i → physical block id); blocks are reference-counted so sequences can share them:
 *   - n > 1 choices fork after the prompt and share its blocks; the first write into a shared, partly
 *     filled block copies it first (copy-on-write);
 *   - prefix caching: every full block is registered under a hash of all tokens up to its end (and the
 *     adapter), so a later request with the same prefix reuses the blocks instead of recomputing them.
 * Free blocks sit in an insertion-ordered free list; a free block keeps its cached contents until it is
 * handed out again (least recently freed first), so cache hits can revive it.
 * This module only does the accounting; the numbers live in KvPool (paged-attention.ts).
 */
import { createHash } from 'node:crypto';

export class OutOfBlocks extends Error {}

export class BlockManager {
  private readonly refCount: Int32Array;
  /** Blocks with refCount 0, oldest-freed first. A Map keeps insertion order and deletes in O(1). */
  private readonly free = new Map<number, true>();
  /** Prefix cache: block hash → block id, and the reverse. */
  private readonly byHash = new Map<string, number>();
  private readonly hashOf = new Map<number, string>();
  /** Called with (from, to) when copy-on-write duplicates a block's contents. */
  onCopy: (from: number, to: number) => void = () => {};
  prefixHits = 0;

  constructor(
    readonly numBlocks: number,
    readonly blockSize: number,
    readonly prefixCaching = true,
  ) {
    if (numBlocks < 1 || blockSize < 1) throw new Error(`block pool needs at least one block of one slot (got ${numBlocks} × ${blockSize})`);
    this.refCount = new Int32Array(numBlocks);
    for (let b = 0; b < numBlocks; b++) this.free.set(b, true);
  }

  get numFree(): number {
    return this.free.size;
  }

  /** Fraction of blocks in use (0..1), for the kv_cache_usage_perc metric. */
  get usage(): number {
    return 1 - this.free.size / this.numBlocks;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  private take(): number {
    const first = this.free.keys().next();
    if (first.done) throw new OutOfBlocks('no free KV blocks');
    const b = first.value;
    this.free.delete(b);
    const h = this.hashOf.get(b);
    if (h !== undefined) {
      // Its cached contents are about to be overwritten.
      this.hashOf.delete(b);
      this.byHash.delete(h);
    }
    this.refCount[b] = 1;
    return b;
  }

  private release(b: number): void {
    if (this.refCount[b]! <= 0) throw new Error(`block ${b} freed twice`);
    if (--this.refCount[b]! === 0) this.free.set(b, true);
  }

  /** Grow `table` until it covers `tokens` positions. Throws OutOfBlocks (and adds nothing) if the pool cannot. */
  ensureCapacity(table: number[], tokens: number): void {
    const need = this.blocksFor(tokens) - table.length;
    if (need > this.free.size) throw new OutOfBlocks(`need ${need} KV blocks, ${this.free.size} free`);
    for (let i = 0; i < need; i++) table.push(this.take());
  }

  /** New blocks `ensureCapacity` + copy-on-write would take to write positions [from, to). */
  blocksNeeded(table: readonly number[], from: number, to: number): number {
    let n = Math.max(0, this.blocksFor(to) - table.length);
    const first = Math.floor(from / this.blockSize);
    if (first < table.length && this.refCount[table[first]!]! > 1) n++;
    return n;
  }

  /**
   * Make the blocks that positions [from, to) will be written into exclusively this sequence's: a shared
   * block (after a fork) is copied first. Only the block holding `from` can be shared and partly filled.
   */
  prepareWrite(table: number[], from: number, to: number): void {
    if (this.blocksNeeded(table, from, to) > this.free.size) throw new OutOfBlocks('no free KV blocks for copy-on-write');
    const i = Math.floor(from / this.blockSize);
    if (i < table.length && this.refCount[table[i]!]! > 1) {
      const copy = this.take();
      this.onCopy(table[i]!, copy);
      this.release(table[i]!);
      table[i] = copy;
    }
    this.ensureCapacity(table, to);
  }

  /** A second owner of the same blocks (n > 1 choices after the shared prompt). */
  fork(table: readonly number[]): number[] {
    for (const b of table) this.refCount[b]!++;
    return table.slice();
  }

  freeAll(table: number[]): void {
    // Last block first, so the free list's oldest end holds prefixes' tails: eviction then drops the
    // end of a cached prefix before its start (a shorter cached prefix stays usable).
    for (let i = table.length - 1; i >= 0; i--) this.release(table[i]!);
    table.length = 0;
  }

  // ------------------------------------------------------------------ prefix cache

  /**
   * Hash of each full block of `tokens`: chained, so a block's hash names its whole prefix. `salt`
   * separates models that give different KV for the same tokens (LoRA adapters).
   */
  blockHashes(tokens: readonly number[], salt: string, fullBlocks = Math.floor(tokens.length / this.blockSize)): string[] {
    const out: string[] = [];
    let parent = salt;
    for (let i = 0; i < fullBlocks; i++) {
      const h = createHash('sha256').update(parent).update(Int32Array.from(tokens.slice(i * this.blockSize, (i + 1) * this.blockSize))).digest('base64');
      out.push(h);
      parent = h;
    }
    return out;
  }

  /**
   * Longest run of cached blocks at the start of `hashes`; they join `table` (which must be empty) with a
   * reference each. Returns the number of positions they cover.
   */
  adoptCached(table: number[], hashes: readonly string[]): number {
    if (!this.prefixCaching) return 0;
    for (const h of hashes) {
      const b = this.byHash.get(h);
      if (b === undefined) break;
      if (this.refCount[b] === 0) this.free.delete(b);
      this.refCount[b]!++;
      table.push(b);
      this.prefixHits++;
    }
    return table.length * this.blockSize;
  }

  /** Register a sequence's full blocks (by their hashes) so later requests can reuse them. */
  register(table: readonly number[], hashes: readonly string[]): void {
    if (!this.prefixCaching) return;
    for (let i = 0; i < hashes.length && i < table.length; i++) {
      const b = table[i]!, h = hashes[i]!;
      if (this.hashOf.has(b) || this.byHash.has(h)) continue; // already cached (this block or a twin)
      this.byHash.set(h, b);
      this.hashOf.set(b, h);
    }
  }

  /** Consistency check for tests: every block is free or referenced, never both. */
  check(): void {
    for (let b = 0; b < this.numBlocks; b++) {
      const rc = this.refCount[b]!;
      if (rc < 0 || (rc === 0) !== this.free.has(b)) throw new Error(`block ${b}: refCount ${rc}, in free list ${this.free.has(b)}`);
    }
  }
}
