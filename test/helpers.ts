/** Small pieces several test files share. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { type ForwardOptions, type ModelConfig, type Params, forward } from '../src/model/gpt.js';

/** A temporary directory (`root`) removed after this file's tests; the function gives a new path in it on every call. */
export function tempDirs(prefix: string): ((name: string) => string) & { root: string } {
  const root = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(root, { recursive: true, force: true }));
  let n = 0;
  return Object.assign((name: string) => join(root, `${name}-${n++}`), { root });
}

/** Logits of token rows [B][T] as one flat array (B·T·vocab), the tensors freed. */
export function forwardLogits(p: Params, c: ModelConfig, rows: number[][], o: ForwardOptions = {}): Float32Array {
  const input = tf.tensor2d(rows, undefined, 'int32');
  const { logits } = forward(p, c, input, o);
  const out = Float32Array.from(logits.dataSync());
  input.dispose();
  logits.dispose();
  return out;
}
