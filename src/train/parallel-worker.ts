/**
 * A data-parallel replica (see parallel.ts): starts the main thread's backend, holds the frozen weights
 * and a copy of the trainable ones, and per step returns the summed gradients and the losses of its
 * micro-batches, computed by the same modelLoss the main thread uses.
 */
import * as tf from '@tensorflow/tfjs-core';
import { parentPort, workerData } from 'node:worker_threads';
import { type BackendName, initBackend } from '../backend/index.js';
import type { Params } from '../model/gpt.js';
import { seedDropout } from '../model/kernels.js';
import { addGrads } from './adamw.js';
import { modelLoss } from './losses.js';
import type { FromWorker, ToWorker, WorkerSpec } from './parallel.js';

const port = parentPort!;
const spec = workerData as WorkerSpec;
const send = (m: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

try {
  await initBackend(spec.backend as BackendName);
  const frozen: Params = Object.fromEntries(Object.entries(spec.frozen).map(([k, t]) => [k, tf.tensor(t.data, t.shape, t.data instanceof Int32Array ? 'int32' : 'float32') /* a quantized base's packed words are int32 */]));
  const vars: Record<string, tf.Variable> = Object.fromEntries(
    Object.entries(spec.trainable).map(([k, shape]) => [k, tf.variable(tf.zeros(shape), true, k)]),
  );
  const params: Params = { ...frozen, ...vars };
  const varList = Object.values(vars);

  port.on('message', (msg: ToWorker) => {
    try {
      for (const [k, data] of Object.entries(msg.weights)) {
        const t = tf.tensor(data, spec.trainable[k], 'float32');
        vars[k]!.assign(t);
        t.dispose();
      }
      const losses: number[] = [];
      let sum: Record<string, tf.Tensor> = {};
      for (const [i, b] of msg.batches.entries()) {
        if (msg.seeds) seedDropout(msg.seeds[i]!);
        const batch = {
          inputs: tf.tensor2d(b.inputs.data, b.inputs.shape as [number, number], 'int32'),
          targets: tf.tensor1d(b.targets, 'int32'),
          mask: b.mask ? tf.tensor1d(b.mask, 'float32') : undefined,
        };
        const { value, grads } = tf.variableGrads(() => modelLoss(params, spec.model, batch, spec.forward), varList);
        for (const t of [batch.inputs, batch.targets, batch.mask]) t?.dispose();
        losses.push(value.dataSync()[0]!);
        value.dispose();
        sum = addGrads(sum, grads); // variables are named after their parameters, so keys already match
      }
      const out = Object.fromEntries(Object.entries(sum).map(([k, g]) => [k, Float32Array.from(g.dataSync() as Float32Array)]));
      for (const g of Object.values(sum)) g.dispose();
      send({ type: 'result', losses, grads: out }, Object.values(out).map((d) => d.buffer as ArrayBuffer));
    } catch (err) {
      send({ type: 'error', message: message(err) });
    }
  });
  send({ type: 'ready' });
} catch (err) {
  send({ type: 'error', message: `start-up failed: ${message(err)}` });
}
