/**
 * Picks the TensorFlow.js backend. Order for `auto`: tensorflow (tfjs-node-gpu, then tfjs-node) > wasm > cpu.
 * The native packages are optionalDependencies: their install downloads libtensorflow, which fails offline,
 * so any error while loading them (not only MODULE_NOT_FOUND: a missing .node binding throws other errors)
 * means "not available" and we fall through, logging why.
 */
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core alone registers no gradients; the @tensorflow/tfjs bundle registers them all (on the same core).
import '@tensorflow/tfjs';

import type { BackendName } from './names.js';
import { enableNativeKernels, nativeStatus } from './native.js';
export { type BackendName, BACKENDS } from './names.js';

export interface BackendInfo {
  name: string; // the tfjs backend actually running: tensorflow | wasm | cpu
  detail: string; // e.g. '@tensorflow/tfjs-node-gpu' or 'wasm (simd)'
  tried: { name: string; error: string }[];
}

let active: BackendInfo | undefined;

async function tryNative(tried: BackendInfo['tried']): Promise<string | undefined> {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      if (await tf.setBackend('tensorflow')) return pkg;
      tried.push({ name: pkg, error: 'loaded but the tensorflow backend did not initialise' });
    } catch (err) {
      tried.push({ name: pkg, error: firstLine(err) });
    }
  }
  return undefined;
}

async function tryWasm(tried: BackendInfo['tried']): Promise<string | undefined> {
  try {
    await import('@tensorflow/tfjs-backend-wasm');
    if (await tf.setBackend('wasm')) return 'wasm';
    tried.push({ name: 'wasm', error: 'backend did not initialise' });
  } catch (err) {
    tried.push({ name: 'wasm', error: firstLine(err) });
  }
  return undefined;
}

async function tryCpu(tried: BackendInfo['tried']): Promise<string | undefined> {
  try {
    await import('@tensorflow/tfjs-backend-cpu');
    if (await tf.setBackend('cpu')) {
      // The cpu backend prints a banner suggesting tfjs-node on first use; we log our own line instead.
      (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
      return 'cpu (plain JavaScript)';
    }
  } catch (err) {
    tried.push({ name: 'cpu', error: firstLine(err) });
  }
  return undefined;
}

function firstLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0]!.slice(0, 200);
}

/** Initialise a backend once per process. Throws if a named backend cannot start. */
export async function initBackend(requested: BackendName = 'auto'): Promise<BackendInfo> {
  if (active) {
    if (requested !== 'auto' && active.name !== requested) {
      throw new Error(`backend already initialised as ${active.name}, cannot switch to ${requested}`);
    }
    return active;
  }
  const tried: BackendInfo['tried'] = [];
  const order: ((t: BackendInfo['tried']) => Promise<string | undefined>)[] =
    requested === 'tensorflow' ? [tryNative]
      : requested === 'wasm' ? [tryWasm]
      : requested === 'cpu' ? [tryCpu]
      : [tryNative, tryWasm, tryCpu];
  for (const attempt of order) {
    const detail = await attempt(tried);
    if (detail) {
      await tf.ready();
      // On WASM, the native addon's kernels take over the hot ops when it was built (see native.ts).
      const kernels = tf.getBackend() === 'wasm' ? (enableNativeKernels(), ` + ${nativeStatus()}`) : '';
      active = { name: tf.getBackend(), detail: detail + kernels, tried };
      return active;
    }
  }
  const why = tried.map((t) => `${t.name}: ${t.error}`).join('; ');
  throw new Error(`backend '${requested}' is not available (${why})`);
}

export function activeBackend(): BackendInfo | undefined {
  return active;
}
