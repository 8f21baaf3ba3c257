/**
 * QLoRA: `llmctl lora` over a quantized base. The frozen base stays packed and is dequantized inside each
 * forward; only the adapter trains; the adapter's module names are the float base's, so it applies to the
 * float model too; merging into a quantized base gives a float checkpoint; data-parallel workers receive
 * the packed int32 words intact; full SFT on a quantized base is refused with one line.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { type Params, forward, paramShapes } from '../src/model/gpt.js';
import { applyAdapter, loadForInference } from '../src/model/lora.js';
import { quantizeModel } from '../src/quant/quantize.js';
import { dequantizeParams } from '../src/quant/tensors.js';
import { lora, mergeLora, sft } from '../src/train/sft.js';
import { setupLogger } from '../src/util/log.js';
import { loraConfig, sftConfig, tinyModel, tinyTokenizer, writeTinyBase } from './finetune-fixtures.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-qlora-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

const TOKENS = [510, 72, 105, 32, 66, 111, 98, 10, 72, 105];
function logitsOf(params: Params, scale?: number): Float32Array {
  const config = tinyModel({ n_layer: 2 });
  const x = tf.tensor2d([TOKENS], [1, TOKENS.length], 'int32');
  const { logits } = forward(params, config, x, { loraScale: scale });
  const out = Float32Array.from(logits.dataSync() as Float32Array);
  tf.dispose([x, logits]);
  return out;
}
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe('QLoRA', () => {
  const floatBase = join(TMP, 'base'), qBase = join(TMP, 'base-int4');
  const ready = (async () => {
    const config = await writeTinyBase(floatBase, { n_layer: 2 });
    const ck = loadCheckpoint(floatBase);
    const q = quantizeModel(ck.params, config, { method: 'int4', group_size: 16, sym: true, desc_act: false, damp_percent: 0.01, block_size: 128, awq_grid: 20 });
    await saveCheckpoint(qBase, { config, params: q.params, tokenizer: tinyTokenizer(), stage: 'quantize', stageConfig: {}, parentDir: floatBase, quantization: q.quantization });
    disposeParams(q.params);
  })();

  test('trains only the adapter over the packed base, loss falls, tensor count flat across steps', async () => {
    await ready;
    const counts: number[] = [];
    const out = join(TMP, 'qlora');
    let packedSeen = false;
    const r = await lora(loraConfig(qBase, out, { train: { max_steps: 6 }, data: { max_rows: 2 } }), { // the same two rows every step
      quiet: true,
      onStep: () => counts.push(tf.memory().numTensors),
      inspect: (p) => (packedSeen = p['h.0.attn.q_proj.qweight']?.dtype === 'int32' && p['h.0.attn.q_proj.weight'] === undefined),
    });
    assert.ok(packedSeen, 'the base stayed packed during training');
    assert.ok(r.losses.at(-1)! < r.losses[0]!, `losses ${r.losses}`);
    assert.ok(counts.slice(1).every((c) => c === counts[1]), `tensor counts ${counts}`);
    const { model, scale, dispose } = loadForInference(out); // base found from adapter_config.json: the quantized one
    assert.ok(model.quantization);
    const adapted = logitsOf(model.params, scale);
    dispose();
    // The same adapter on the float base: same module names; output near the quantized one.
    const float = loadCheckpoint(floatBase);
    const onFloat = applyAdapter(float.params, out);
    const floatAdapted = logitsOf(onFloat.params, onFloat.scale), plain = logitsOf(float.params);
    assert.ok(maxDiff(floatAdapted, plain) > 1e-3, 'the adapter changes the float model');
    const q = loadCheckpoint(qBase);
    const quantGap = maxDiff(logitsOf(q.params), plain);
    assert.ok(maxDiff(adapted, floatAdapted) < 2 * quantGap + 1e-3, `adapted gap ${maxDiff(adapted, floatAdapted)} vs quantization gap ${quantGap}`);

    // Merge into the quantized base: a float checkpoint equal to dequantized base + adapter.
    const merged = join(TMP, 'merged');
    await mergeLora({ adapter: out, out: merged });
    const m = loadCheckpoint(merged);
    assert.equal(m.quantization, undefined);
    const deq = dequantizeParams(q.params, paramShapes(q.config));
    const ref = applyAdapter(deq, out);
    assert.ok(maxDiff(logitsOf(m.params), logitsOf(ref.params, ref.scale)) < 1e-4);
    ref.dispose();
    for (const p of [deq, m.params, q.params, float.params]) disposeParams(p);
    onFloat.dispose();
  });

  test('two data-parallel replicas get the packed base intact: same losses as one process with grad_accum 2', async () => {
    await ready;
    const one = await lora(loraConfig(qBase, join(TMP, 'one'), { train: { max_steps: 2, grad_accum: 2 } }), { quiet: true });
    const two = await lora(loraConfig(qBase, join(TMP, 'two'), { train: { max_steps: 2, workers: 2 } }), { quiet: true });
    one.losses.forEach((l, i) => assert.ok(Math.abs(l - two.losses[i]!) < 1e-4, `step ${i}: ${l} vs ${two.losses[i]}`));
  });

  test('full SFT on a quantized base is refused, naming the directory', async () => {
    await ready;
    await assert.rejects(sft(sftConfig(qBase, join(TMP, 'sft')), { quiet: true }), new RegExp(`${qBase}: is quantized \\(rtn\\); full fine-tuning needs float weights`));
  });
});
