/**
 * The serving engine (vLLM's LLMEngine): requests in, token deltas out, one step at a time.
 *
 * A step = schedule (scheduler.ts) → one batched forward over the paged KV cache (model-runner.ts) →
 * sample every sequence whose chunk reached its last token (sample.ts, one Sampler per choice, so seeds and
 * penalties are per request) → emit text deltas → drop finished sequences, whose blocks return to the free
 * list at once. Between steps the engine yields to the event loop (setImmediate), so requests that arrive
 * during a step join the batch at the next one and finished ones leave it immediately.
 *
 * n > 1: a request starts as one sequence; when its prompt is computed, the n choices fork from it and share
 * its blocks (copy-on-write), each sampling its first token from the same logits.
 */
import { GenerationText } from '../model/generate.js';
import type { ModelConfig } from '../model/gpt.js';
import { stopTokenIds } from '../model/prompt.js';
import { Sampler, logSoftmax, topLogprobs } from '../model/sample.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { BlockManager } from './block-manager.js';
import { ModelRunner, type ModelVariant, type RunSegment } from './model-runner.js';
import { KvPool } from './paged-attention.js';
import { type ScheduledSegment, Scheduler, type Sequence } from './scheduler.js';

export interface EngineConfig {
  num_blocks: number;
  block_size: number;
  max_num_seqs: number;
  max_num_batched_tokens: number;
  prefix_caching: boolean;
}

export interface SamplingParams {
  max_tokens: number;
  temperature: number;
  top_p: number;
  top_k: number;
  repetition_penalty: number;
  presence_penalty: number;
  frequency_penalty: number;
  stop: string[];
  seed?: number;
  n: number;
  /** Number of top alternatives per token to report; undefined = no logprobs at all. */
  logprobs?: number;
}

export type FinishReason = 'stop' | 'length';

export interface TokenLogprob {
  id: number;
  token: string;
  logprob: number;
  top: { id: number; token: string; logprob: number }[];
}

export interface ChoiceDelta {
  index: number;
  /** Text that became final this step (may be empty). */
  text: string;
  /** Tokens sampled this step, with log-probabilities when asked for. */
  logprobs: TokenLogprob[];
  finishReason?: FinishReason;
}

export interface RequestCallbacks {
  onDelta(delta: ChoiceDelta): void;
  onFinish(usage: { prompt_tokens: number; completion_tokens: number }): void;
  onError(err: Error): void;
}

export interface EngineRequest {
  id: string;
  promptIds: number[];
  params: SamplingParams;
  /** '' for the base model, else a LoRA adapter's name. */
  model: string;
}

/** A request the engine cannot take (the API answers 400 naming `param`). */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly param: string | null,
  ) {
    super(message);
  }
}

/** Timings of a finished request, for the latency histograms. */
export interface RequestRecord {
  promptTokens: number;
  completionTokens: number;
  arrival: number;
  firstToken?: number;
  end: number;
  finishReason: FinishReason | 'abort' | 'error';
}

interface RequestState extends EngineRequest {
  cb: RequestCallbacks;
  seqs: SeqState[];
  forked: boolean;
  unfinished: number;
  arrival: number;
  firstToken?: number;
  completionTokens: number;
  /** Seed for requests that give none (n choices must still differ). */
  randomSeed: number;
}

interface SeqState extends Sequence {
  request: RequestState;
  index: number;
  sampler: Sampler;
  text: GenerationText;
  generated: number[];
  finished: boolean;
  finishReason?: FinishReason;
}

const now = () => performance.now() / 1000;

export class Engine {
  readonly blocks: BlockManager;
  readonly scheduler: Scheduler;
  readonly pool: KvPool;
  private readonly runner: ModelRunner;
  private readonly requests = new Map<string, RequestState>();
  private readonly stopIds: Set<number>;
  private nextSeqId = 0;
  private pending: NodeJS.Immediate | undefined;
  private idleWaiters: (() => void)[] = [];
  /** Totals since start, for /metrics. */
  promptTokensTotal = 0;
  generationTokensTotal = 0;
  steps = 0;
  onRequestDone: (r: RequestRecord) => void = () => {};
  /** Step by itself between event-loop turns; tests turn it off and call step() directly. */
  autoRun = true;

  constructor(
    readonly config: ModelConfig,
    readonly tokenizer: Tokenizer,
    readonly variants: ReadonlyMap<string, ModelVariant>,
    readonly cfg: EngineConfig,
  ) {
    this.blocks = new BlockManager(cfg.num_blocks, cfg.block_size, cfg.prefix_caching);
    this.pool = new KvPool(config, cfg.num_blocks, cfg.block_size);
    this.blocks.onCopy = (from, to) => this.pool.copyBlock(from, to);
    this.scheduler = new Scheduler(cfg, this.blocks);
    this.runner = new ModelRunner(config, variants, this.pool);
    this.stopIds = new Set(stopTokenIds(tokenizer));
  }

  /** Requests with a sequence in the running batch (n > 1 choices count once, as vLLM counts). */
  get numRunning(): number {
    return new Set(this.scheduler.running.map((s) => (s as SeqState).request)).size;
  }

  get numWaiting(): number {
    return this.scheduler.waiting.length;
  }

  get numRequests(): number {
    return this.requests.size;
  }

  /** Check a request against the model and the pool; throws RequestError. */
  validate(r: EngineRequest): void {
    const len = r.promptIds.length, p = r.params;
    if (len === 0) throw new RequestError('the prompt is empty', 'prompt');
    if (!this.variants.has(r.model)) throw new RequestError(`model '${r.model}' is not served`, 'model');
    if (len + p.max_tokens > this.config.n_ctx) {
      throw new RequestError(`This model's maximum context length is ${this.config.n_ctx} tokens. However, you requested ${len + p.max_tokens} tokens (${len} in the prompt, ${p.max_tokens} in the completion). Please reduce the prompt or max_tokens.`, len >= this.config.n_ctx ? 'prompt' : 'max_tokens');
    }
    if (this.blocks.blocksFor(len + p.max_tokens) > this.cfg.num_blocks) {
      throw new RequestError(`prompt + max_tokens = ${len + p.max_tokens} tokens need more KV blocks than the server's ${this.cfg.num_blocks} × ${this.cfg.block_size}`, 'max_tokens');
    }
    if (p.n > this.cfg.max_num_seqs) throw new RequestError(`n = ${p.n} exceeds the server's max_num_seqs ${this.cfg.max_num_seqs}`, 'n');
    for (const id of r.promptIds) if (!(id >= 0 && id < this.config.vocab_size)) throw new RequestError(`token id ${id} is outside the vocabulary`, 'prompt');
  }

  add(r: EngineRequest, cb: RequestCallbacks): void {
    this.validate(r);
    if (this.requests.has(r.id)) throw new RequestError(`duplicate request id ${r.id}`, null);
    const req: RequestState = { ...r, cb, seqs: [], forked: r.params.n === 1, unfinished: r.params.n, arrival: now(), completionTokens: 0, randomSeed: Math.floor(Math.random() * 2 ** 31) };
    const first = this.newSeq(req, 0, [...r.promptIds]);
    first.slots = r.params.n;
    req.seqs.push(first);
    this.requests.set(r.id, req);
    this.scheduler.add(first);
    this.kick();
  }

  /** Cancel a request (client gone, timeout): its sequences leave and their blocks are free at once. */
  abort(id: string, reason: 'abort' | 'error' = 'abort'): boolean {
    const req = this.requests.get(id);
    if (!req) return false;
    for (const s of req.seqs) if (!s.finished) this.scheduler.remove(s);
    this.requests.delete(id);
    this.record(req, reason);
    this.notifyIdle();
    return true;
  }

  private newSeq(req: RequestState, index: number, tokens: number[]): SeqState {
    const p = req.params;
    return {
      id: this.nextSeqId++,
      tokens,
      numComputed: 0,
      blockTable: [],
      blockHashes: [],
      salt: `model:${req.model}`,
      slots: 1,
      preemptions: 0,
      request: req,
      index,
      // Each choice its own stream: seed + index, so n choices with one seed differ yet repeat.
      sampler: new Sampler({ ...p, seed: (p.seed ?? req.randomSeed) + index }),
      text: new GenerationText(this.tokenizer, req.promptIds[req.promptIds.length - 1], p.stop),
      generated: [],
      finished: false,
    };
  }

  private kick(): void {
    if (!this.autoRun || this.pending || !this.hasWork()) return;
    this.pending = setImmediate(() => {
      this.pending = undefined;
      try {
        this.step();
      } catch (err) {
        this.failAll(err as Error);
      }
      this.kick();
    });
  }

  hasWork(): boolean {
    return this.scheduler.running.length > 0 || this.scheduler.waiting.length > 0;
  }

  /** Resolves when no request is left (for graceful shutdown). */
  whenIdle(): Promise<void> {
    if (this.requests.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    if (this.requests.size > 0) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  /** One iteration: schedule, run the batch, sample, emit. Returns the number of tokens computed. */
  step(): number {
    const segs = this.scheduler.schedule() as (ScheduledSegment & { seq: SeqState })[];
    if (segs.length === 0) return 0;
    this.steps++;
    const run: RunSegment[] = segs.map((s) => ({
      blockTable: s.seq.blockTable,
      start: s.start,
      count: s.count,
      tokens: s.seq.tokens.slice(s.start, s.start + s.count),
      variant: s.seq.request.model,
      sample: s.sample,
    }));
    const logits = this.runner.run(run);
    let computed = 0;
    const stepped = new Set<RequestState>(); // only these can have finished this step
    segs.forEach((s, i) => {
      computed += s.count;
      const req = s.seq.request;
      if (s.seq.finished || this.requests.get(req.id) !== req) return; // aborted by a callback during this step
      stepped.add(req);
      this.scheduler.computed(s);
      const row = logits[i];
      if (!row) return;
      // The first sample of an n > 1 request: all n choices draw from this row.
      const choices = req.forked ? [s.seq] : [s.seq, ...this.fork(req, s.seq)];
      for (const c of choices) this.sampleInto(c, row);
    });
    for (const req of stepped) if (req.unfinished === 0 && this.requests.get(req.id) === req) this.complete(req);
    return computed;
  }

  /** The prompt is computed: the other n−1 choices start here, sharing its blocks. */
  private fork(req: RequestState, parent: SeqState): SeqState[] {
    const children: SeqState[] = [];
    for (let i = 1; i < req.params.n; i++) {
      const child = this.newSeq(req, i, parent.tokens.slice());
      child.numComputed = parent.numComputed;
      child.blockTable = this.blocks.fork(parent.blockTable);
      child.blockHashes = parent.blockHashes.slice();
      children.push(child);
      req.seqs.push(child);
      this.scheduler.addRunning(child);
    }
    parent.slots = 1;
    req.forked = true;
    return children;
  }

  private sampleInto(seq: SeqState, row: Float32Array): void {
    const req = seq.request, p = req.params;
    const prompt = seq.tokens.length - seq.generated.length;
    const id = seq.sampler.sample(row, seq.tokens, seq.tokens.slice(prompt));
    if (req.firstToken === undefined) req.firstToken = now();
    const logprobs: TokenLogprob[] = [];
    if (p.logprobs !== undefined) {
      const lp = logSoftmax(row);
      logprobs.push({
        id, token: this.tokenText(id), logprob: lp[id]!,
        top: topLogprobs(lp, p.logprobs).map((t) => ({ ...t, token: this.tokenText(t.id) })),
      });
    }
    let finish: FinishReason | undefined;
    if (this.stopIds.has(id)) {
      finish = 'stop';
      seq.text.finish(false);
    } else {
      seq.tokens.push(id);
      seq.generated.push(id);
      req.completionTokens++;
      this.generationTokensTotal++;
      if (seq.text.push(id)) finish = 'stop';
      else if (seq.generated.length >= p.max_tokens) {
        finish = 'length';
        seq.text.finish(true);
      }
    }
    if (finish) {
      seq.finished = true;
      seq.finishReason = finish;
      req.unfinished--;
      this.scheduler.remove(seq);
    }
    req.cb.onDelta({ index: seq.index, text: seq.text.take(), logprobs: finish === 'stop' && this.stopIds.has(id) ? [] : logprobs, finishReason: finish });
  }

  private tokenText(id: number): string {
    return this.tokenizer.decode([id], { skipSpecial: false });
  }

  private complete(req: RequestState): void {
    this.requests.delete(req.id);
    this.record(req, req.seqs[0]!.finishReason ?? 'stop');
    req.cb.onFinish({ prompt_tokens: req.promptIds.length, completion_tokens: req.completionTokens });
    this.notifyIdle();
  }

  private record(req: RequestState, reason: RequestRecord['finishReason']): void {
    this.promptTokensTotal += req.promptIds.length;
    this.onRequestDone({ promptTokens: req.promptIds.length, completionTokens: req.completionTokens, arrival: req.arrival, firstToken: req.firstToken, end: now(), finishReason: reason });
  }

  /** A step failed (a bug or an exhausted backend): fail every request rather than the process. */
  private failAll(err: Error): void {
    for (const req of [...this.requests.values()]) {
      this.abort(req.id, 'error');
      req.cb.onError(err);
    }
  }
}
