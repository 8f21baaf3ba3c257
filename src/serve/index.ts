/**
 * Start a server from a config: load the checkpoint (+ LoRA adapters), size the KV pool, wire engine →
 * metrics → HTTP API. The command module and the tests both start servers through here.
 */
import { basename, resolve } from 'node:path';
import type { ServeConfig } from '../config/serve.js';
import { disposeParams, type LoadedCheckpoint } from '../checkpoint/model.js';
import { checkAdapterTargets, loadAdapter, loadForInference, loraScale } from '../model/lora.js';
import { ApiServer } from './api.js';
import { Engine, type EngineConfig } from './engine.js';
import { ServeMetrics } from './metrics.js';
import type { ModelVariant } from './model-runner.js';
import { KvPool } from './paged-attention.js';

export { ApiServer } from './api.js';
export { Engine } from './engine.js';

export interface RunningServer {
  api: ApiServer;
  engine: Engine;
  url: string;
  port: number;
  /** Graceful stop (drain, then cancel what is left) and free the model. */
  close(drainMs?: number): Promise<number>;
}

/** The engine's pool and budgets from the config; default pool: every running sequence can hold a full context. */
export function engineConfig(cfg: ServeConfig, model: LoadedCheckpoint['config']): EngineConfig {
  const e = cfg.engine;
  const perSeq = Math.ceil(model.n_ctx / e.block_size);
  const numBlocks = e.num_blocks ?? (e.kv_cache_mb !== undefined
    ? Math.max(1, Math.floor((e.kv_cache_mb * 2 ** 20) / KvPool.bytesPerBlock(model, e.block_size)))
    : perSeq * e.max_num_seqs);
  return { num_blocks: numBlocks, block_size: e.block_size, max_num_seqs: e.max_num_seqs, max_num_batched_tokens: e.max_num_batched_tokens, prefix_caching: e.prefix_caching };
}

/** Build the engine over a loaded model (base params + named adapters). */
export function createEngine(model: LoadedCheckpoint, variants: Map<string, ModelVariant>, cfg: ServeConfig): Engine {
  return new Engine(model.config, model.tokenizer, variants, engineConfig(cfg, model.config));
}

export async function startServer(cfg: ServeConfig, preloaded?: LoadedCheckpoint): Promise<RunningServer> {
  const loaded = preloaded ? { model: preloaded, scale: undefined, dispose: () => {} } : loadForInference(cfg.checkpoint);
  const base = loaded.model;
  const variants = new Map<string, ModelVariant>([['', { params: base.params, loraScale: loaded.scale }]]);
  const adapters: (() => void)[] = [];
  // Extra adapters go over the plain base (when the checkpoint was itself a LoRA dir, without its lora_A/B).
  const plain = Object.fromEntries(Object.entries(base.params).filter(([k]) => !/\.lora_[AB]$/.test(k)));
  for (const [name, dir] of Object.entries(cfg.lora)) {
    const { lora, config } = loadAdapter(dir);
    checkAdapterTargets(base.params, lora, dir, cfg.checkpoint);
    variants.set(name, { params: { ...plain, ...lora }, loraScale: loraScale(config) });
    adapters.push(() => disposeParams(lora));
  }
  const engine = createEngine(base, variants, cfg);
  const modelName = cfg.model_name ?? basename(resolve(cfg.checkpoint));
  if (variants.has(modelName)) throw new Error(`lora: adapter name '${modelName}' is the base model's name; pick another`);
  const metrics = new ServeMetrics(engine, modelName);
  const api = new ApiServer(engine, metrics, {
    host: cfg.host, port: cfg.port, model_name: modelName, api_key: cfg.api_key,
    max_waiting: cfg.limits.max_waiting, max_body_bytes: cfg.limits.max_body_bytes, request_timeout_s: cfg.limits.request_timeout_s,
  });
  const addr = await api.listen();
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    api, engine, port: addr.port, url: `http://${host}:${addr.port}`,
    close: async (drainMs = cfg.limits.drain_timeout_s * 1000) => {
      const cancelled = await api.shutdown(drainMs);
      for (const d of adapters) d();
      loaded.dispose();
      return cancelled;
    },
  };
}
