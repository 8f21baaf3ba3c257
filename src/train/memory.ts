/**
 * A memory estimate made from the config alone, before anything is allocated, so an absurd config
 * (n_ctx 1e9, n_embd 65536) stops at once with the figure instead of allocating until it crashes.
 * Deliberately rough (float32 everywhere; the tensors a backward pass keeps per token and layer), but of
 * the right order: it only has to separate "fits" from "cannot possibly fit".
 */
import { freemem } from 'node:os';
import { activeBackend } from '../backend/index.js';
import { formatBytes } from '../checkpoint/dir.js';
import { type ModelConfig, countParams } from '../model/gpt.js';
import { InputError } from '../util/errors.js';

export interface MemoryEstimate {
  params: number;
  /** Weights (+ gradients and two AdamW moments per trainable weight when training). */
  weightBytes: number;
  /** Activations kept for the backward pass of one micro-batch (or the KV cache of one sequence). */
  activationBytes: number;
  total: number;
}

/** `trainable`: how many of the parameters the optimizer updates (all of them for pretrain/sft). */
export function estimateMemory(c: ModelConfig, batchSize: number, o: { training: boolean; trainable?: number } = { training: true }): MemoryEstimate {
  const params = countParams(c);
  const trainable = o.training ? (o.trainable ?? params) : 0;
  const weightBytes = 4 * (params + 3 * trainable); // weights, + gradient, m and v
  const T = c.n_ctx, B = o.training ? batchSize : 1;
  // Per token and layer: norms, q/k/v/o, residuals (~10·d), MLP hidden (~3·n_inner), and the attention
  // scores and probabilities over the context (2·n_head·T); then logits, softmax and their gradient (3·V).
  const perToken = o.training ? c.n_layer * (10 * c.n_embd + 3 * c.n_inner + 2 * c.n_head * T) + 3 * c.vocab_size : c.n_layer * 2 * c.n_embd + c.vocab_size;
  const activationBytes = 4 * B * T * perToken;
  return { params, weightBytes, activationBytes, total: weightBytes + activationBytes };
}

/** Memory this process can use: free system memory, and at most 4 GiB on the (32-bit) WASM backend. */
export function availableMemory(): number {
  const free = typeof process.availableMemory === 'function' ? process.availableMemory() : freemem();
  return activeBackend()?.name === 'wasm' ? Math.min(free, 4 * 2 ** 30) : free;
}

/** Throw (exit 2) when the estimate exceeds what is available, unless `force`. `where` names the config. */
export function checkMemory(where: string, c: ModelConfig, batchSize: number, o: { training: boolean; trainable?: number; force?: boolean }): MemoryEstimate {
  const e = estimateMemory(c, batchSize, o);
  const available = availableMemory();
  if (e.total > available && !o.force) {
    throw new InputError(
      `${where}: this model needs about ${formatBytes(e.total)} (${e.params.toLocaleString('en-US')} parameters: ${formatBytes(e.weightBytes)} ` +
        `of weights${o.training ? ', gradients and optimizer moments' : ''}, ${formatBytes(e.activationBytes)} of activations) but about ` +
        `${formatBytes(available)} is available; shrink the model or batch, or pass --force to try anyway`,
    );
  }
  return e;
}
