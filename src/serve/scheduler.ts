/**
 * Iteration-level scheduling (Orca; vLLM's unified scheduler): before every step, decide which sequences
 * run and how many of their tokens. A sequence is just its tokens (prompt + output so far) and how many of
 * them already have keys/values in the pool; prefill and decode are the same thing — a prompt needs many
 * tokens computed, a decoding sequence one — so they share one token budget, and a long prompt is split into
 * chunks across steps (chunked prefill) instead of stalling everyone's decode.
 *
 * Each step: the running sequences first, oldest first; when the pool cannot hold a sequence's new tokens,
 * the newest running sequence is preempted (its blocks freed, to be recomputed later from its tokens) until
 * it can. Then waiting sequences join while the step has token budget, a sequence slot and free blocks.
 */
import { BlockManager } from './block-manager.js';

export interface SchedulerConfig {
  /** Most sequences in the running batch. */
  max_num_seqs: number;
  /** Most tokens computed in one step (prompt chunks + decode tokens). */
  max_num_batched_tokens: number;
}

export interface Sequence {
  readonly id: number;
  /** Prompt + generated tokens. */
  tokens: number[];
  /** Tokens whose keys/values are in the pool. */
  numComputed: number;
  blockTable: number[];
  /** Hashes of the sequence's full blocks, for the prefix cache. */
  blockHashes: string[];
  /** Prefix-cache salt (the model/adapter the KV belongs to). */
  readonly salt: string;
  /** Sequence slots this entry will occupy once running (n for a request that forks after its prompt). */
  slots: number;
  preemptions: number;
}

export interface ScheduledSegment {
  seq: Sequence;
  start: number;
  count: number;
  /** This chunk reaches the sequence's last token: its logits are sampled. */
  sample: boolean;
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  numPreemptions = 0;

  constructor(
    readonly config: SchedulerConfig,
    readonly blocks: BlockManager,
  ) {}

  get numRunningSlots(): number {
    return this.running.reduce((n, s) => n + s.slots, 0);
  }

  add(seq: Sequence): void {
    this.waiting.push(seq);
  }

  /** Drop a sequence wherever it is and free its blocks at once. */
  remove(seq: Sequence): void {
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    this.blocks.freeAll(seq.blockTable);
  }

  /** A sequence produced by a fork is already running (its prompt is computed and shared). */
  addRunning(seq: Sequence): void {
    this.running.push(seq);
  }

  private preempt(seq: Sequence): void {
    // Recompute, not swap: drop its KV and start over from its tokens (vLLM's default for small groups).
    this.running.splice(this.running.indexOf(seq), 1);
    this.blocks.freeAll(seq.blockTable);
    seq.numComputed = 0;
    seq.preemptions++;
    this.numPreemptions++;
    this.waiting.unshift(seq);
  }

  schedule(): ScheduledSegment[] {
    const out: ScheduledSegment[] = [];
    let budget = this.config.max_num_batched_tokens;
    let preempted = false;
    const scheduled = new Set<Sequence>();
    for (let i = 0; i < this.running.length && budget > 0; ) {
      const seq = this.running[i]!;
      const start = seq.numComputed, count = Math.min(seq.tokens.length - start, budget);
      if (count <= 0) {
        i++;
        continue;
      }
      // Make room: preempt from the newest end, never a sequence already given tokens this step.
      while (this.blocks.blocksNeeded(seq.blockTable, start, start + count) > this.blocks.numFree) {
        const victim = this.running[this.running.length - 1]!;
        if (scheduled.has(victim)) break;
        this.preempt(victim);
        preempted = true;
        if (victim === seq) break;
      }
      if (!this.running.includes(seq)) break; // it was the newest: preempted itself
      if (this.blocks.blocksNeeded(seq.blockTable, start, start + count) > this.blocks.numFree) break;
      this.blocks.prepareWrite(seq.blockTable, start, start + count);
      out.push({ seq, start, count, sample: start + count === seq.tokens.length });
      scheduled.add(seq);
      budget -= count;
      i++;
    }
    // New and preempted sequences join, unless this step had to preempt (the pool is full).
    while (!preempted && budget > 0 && this.waiting.length > 0) {
      const seq = this.waiting[0]!;
      if (this.numRunningSlots + seq.slots > this.config.max_num_seqs && this.running.length > 0) break;
      if (seq.numComputed === 0 && seq.blockTable.length === 0) {
        // Reuse cached blocks of the same prefix; at least the last token is computed, for its logits.
        const full = Math.floor((seq.tokens.length - 1) / this.blocks.blockSize);
        if (seq.blockHashes.length < full) seq.blockHashes = this.blocks.blockHashes(seq.tokens, seq.salt, full);
        seq.numComputed = this.blocks.adoptCached(seq.blockTable, seq.blockHashes.slice(0, full));
      }
      const start = seq.numComputed, count = Math.min(seq.tokens.length - start, budget);
      if (this.blocks.blocksNeeded(seq.blockTable, start, start + count) > this.blocks.numFree) {
        this.blocks.freeAll(seq.blockTable); // give back what the prefix cache lent it; retry next step
        seq.numComputed = 0;
        break;
      }
      this.blocks.prepareWrite(seq.blockTable, start, start + count);
      this.waiting.shift();
      this.running.push(seq);
      out.push({ seq, start, count, sample: start + count === seq.tokens.length });
      budget -= count;
    }
    return out;
  }

  /** After a step computed `seg`: advance the sequence and register its newly full blocks in the prefix cache. */
  computed(seg: ScheduledSegment): void {
    const seq = seg.seq;
    seq.numComputed = seg.start + seg.count;
    const full = Math.floor(seq.numComputed / this.blocks.blockSize);
    if (full > seq.blockHashes.length) seq.blockHashes = this.blocks.blockHashes(seq.tokens, seq.salt, full);
    this.blocks.register(seq.blockTable, seq.blockHashes.slice(0, full));
  }
}
