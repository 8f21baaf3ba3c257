/**
 * Save/load time of checkpoints in the Hugging Face layout (src/checkpoint/hf-names.ts: renames, Llama's
 * [out, in] transposes, GPT-2's fused c_attn) and of an F16 / BF16 sharded import, on a 10.8M-parameter model.
 *   node --import tsx bench/hf-checkpoint.ts
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { importHf } from '../src/checkpoint/hf-import.js';
import { MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { type TensorData, fromFloat32, readSafetensors, toFloat32, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { countParams, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';

await initBackend('wasm');
const tmp = mkdtempSync(join(tmpdir(), 'llmctl-bench-hf-'));
const tok = Tokenizer.train(['to be or not to be'], { vocabSize: 256 + 3 });
const ms = (t0: number) => Math.round(performance.now() - t0);

for (const arch of ['gpt2', 'llama'] as const) {
  const c = resolveModelConfig({ arch, vocab_size: 259, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6, tie_embeddings: arch === 'gpt2' });
  const params = initParams(c, 1);
  const dir = join(tmp, arch);
  let t0 = performance.now();
  await saveCheckpoint(dir, { config: c, params, tokenizer: tok, stage: 'bench', stageConfig: {} });
  const save = ms(t0);
  t0 = performance.now();
  const ck = loadCheckpoint(dir);
  const load = ms(t0);
  disposeParams(ck.params);
  // The same weights as two BF16/F16 shards with an index, as a Hugging Face download would be.
  const { tensors } = readSafetensors(join(dir, MODEL_FILE));
  const names = Object.keys(tensors);
  const half = (n: string, i: number): TensorData => fromFloat32(toFloat32(tensors[n]!), tensors[n]!.shape, i % 2 ? 'BF16' : 'F16');
  const shards = [names.slice(0, names.length / 2), names.slice(names.length / 2)];
  const files = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  shards.forEach((s, k) => writeSafetensors(join(dir, files[k]!), Object.fromEntries(s.map((n, i) => [n, half(n, i)])), { format: 'pt' }));
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: Object.fromEntries(shards.flatMap((s, k) => s.map((n) => [n, files[k]]))) }));
  rmSync(join(dir, MODEL_FILE));
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  t0 = performance.now();
  const m = importHf(dir);
  const imp = ms(t0);
  disposeParams(m.params);
  disposeParams(params);
  console.log(`${arch}: ${countParams(c).toLocaleString('en-US')} params (${cfg.architectures[0]}) — save ${save} ms, load ${load} ms, import of 2 F16/BF16 shards ${imp} ms`);
}
rmSync(tmp, { recursive: true, force: true });
