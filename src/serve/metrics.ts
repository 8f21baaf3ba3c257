/**
 * /metrics in the Prometheus text exposition format (version 0.0.4), named like vLLM's metrics under an
 * `llmctl:` prefix: gauges read from the engine when scraped, counters and latency histograms fed by each
 * finished request.
 */
import type { Engine, RequestRecord } from './engine.js';

/** vLLM's bucket bounds (seconds). */
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array(bounds.length).fill(0);
  }

  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
  }

  /** Exposition lines: cumulative buckets, +Inf, _sum and _count. */
  lines(name: string, labels: string): string[] {
    const l = (extra: string) => `{${[labels, extra].filter(Boolean).join(',')}}`;
    return [
      ...this.bounds.map((b, i) => `${name}_bucket${l(`le="${b}"`)} ${this.counts[i]}`),
      `${name}_bucket${l('le="+Inf"')} ${this.count}`,
      `${name}_sum${labels ? `{${labels}}` : ''} ${this.sum}`,
      `${name}_count${labels ? `{${labels}}` : ''} ${this.count}`,
    ];
  }
}

export class ServeMetrics {
  readonly ttft = new Histogram(TTFT_BUCKETS);
  readonly tpot = new Histogram(TPOT_BUCKETS);
  readonly e2e = new Histogram(E2E_BUCKETS);
  readonly finished = new Map<string, number>();
  rejected = 0;

  constructor(
    private readonly engine: Engine,
    private readonly modelName: string,
  ) {
    engine.onRequestDone = (r) => this.observe(r);
  }

  observe(r: RequestRecord): void {
    this.finished.set(r.finishReason, (this.finished.get(r.finishReason) ?? 0) + 1);
    if (r.firstToken !== undefined) {
      this.ttft.observe(r.firstToken - r.arrival);
      if (r.completionTokens > 1) this.tpot.observe((r.end - r.firstToken) / (r.completionTokens - 1));
    }
    this.e2e.observe(r.end - r.arrival);
  }

  render(): string {
    const e = this.engine, label = `model_name="${this.modelName.replace(/["\\\n]/g, '_')}"`;
    const out: string[] = [];
    const metric = (name: string, type: 'gauge' | 'counter' | 'histogram', help: string, lines: string[]) => {
      out.push(`# HELP llmctl:${name} ${help}`, `# TYPE llmctl:${name} ${type}`, ...lines);
    };
    const one = (name: string, v: number, extra = '') => `llmctl:${name}{${label}${extra}} ${v}`;
    metric('num_requests_running', 'gauge', 'Requests with sequences in the running batch.', [one('num_requests_running', e.numRunning)]);
    metric('num_requests_waiting', 'gauge', 'Sequences waiting to be scheduled (new or preempted).', [one('num_requests_waiting', e.numWaiting)]);
    metric('kv_cache_usage_perc', 'gauge', 'Fraction of KV-cache blocks in use (1 = full).', [one('kv_cache_usage_perc', e.blocks.usage)]);
    metric('num_preemptions_total', 'counter', 'Sequences preempted (KV freed, recomputed later) because blocks ran out.', [one('num_preemptions_total', e.scheduler.numPreemptions)]);
    metric('prefix_cache_hits_total', 'counter', 'KV blocks reused from the prefix cache.', [one('prefix_cache_hits_total', e.blocks.prefixHits)]);
    metric('prompt_tokens_total', 'counter', 'Prompt tokens of finished requests.', [one('prompt_tokens_total', e.promptTokensTotal)]);
    metric('generation_tokens_total', 'counter', 'Generated tokens.', [one('generation_tokens_total', e.generationTokensTotal)]);
    metric('request_success_total', 'counter', 'Finished requests by finish reason (abort: cancelled or timed out).', [...this.finished].map(([r, n]) => one('request_success_total', n, `,finished_reason="${r}"`)));
    metric('requests_rejected_total', 'counter', 'Requests refused with 429 because the waiting queue was full.', [one('requests_rejected_total', this.rejected)]);
    metric('time_to_first_token_seconds', 'histogram', 'Time from arrival to the first generated token.', this.ttft.lines('llmctl:time_to_first_token_seconds', label));
    metric('time_per_output_token_seconds', 'histogram', 'Mean time per generated token after the first, per request.', this.tpot.lines('llmctl:time_per_output_token_seconds', label));
    metric('e2e_request_latency_seconds', 'histogram', 'Time from arrival to the end of the request.', this.e2e.lines('llmctl:e2e_request_latency_seconds', label));
    // The standard process metric (as prom-client exports it): lets a benchmark on a shared machine divide
    // tokens by the server's own CPU time.
    const cpu = process.cpuUsage();
    out.push('# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.', '# TYPE process_cpu_seconds_total counter', `process_cpu_seconds_total ${(cpu.user + cpu.system) / 1e6}`);
    return out.join('\n') + '\n';
  }
}
