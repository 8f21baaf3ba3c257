/** GPT-2 initialisation: N(0, 0.02) weights, residual output projections scaled by 1/sqrt(2·n_layer). */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '../util/rng.js';
import { type ModelConfig, paramShapes } from './gpt.js';

export function initParams(c: ModelConfig, seed: number): Record<string, tf.Tensor> {
  const rng = new Rng(seed);
  const out: Record<string, tf.Tensor> = {};
  for (const [name, shape] of Object.entries(paramShapes(c))) {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    if (name.endsWith('.bias')) {
      // zeros
    } else if (shape.length === 1) {
      data.fill(1); // norm gains
    } else {
      const residual = /(o_proj|down_proj)\.weight$/.test(name);
      const std = residual ? 0.02 / Math.sqrt(2 * c.n_layer) : 0.02;
      for (let i = 0; i < size; i++) data[i] = rng.nextNormal() * std;
    }
    out[name] = tf.tensor(data, shape);
  }
  return out;
}
