/**
 * What load-time verification costs: loadCheckpoint of a 10.8M-parameter checkpoint (43 MB of weights)
 * with sha256 of every file (the default) and with sizes only (--no-verify), interleaved, 5 rounds.
 *   node --import tsx bench/verify.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { setVerifyHashes } from '../src/checkpoint/verify.js';
import { countParams, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { setupLogger } from '../src/util/log.js';

await initBackend('wasm');
setupLogger('silent');
const config = resolveModelConfig({ arch: 'gpt2', vocab_size: 256, n_ctx: 256, n_layer: 6, n_embd: 384, n_head: 6 });
const root = mkdtempSync(join(tmpdir(), 'llmctl-bench-verify-'));
const params = initParams(config, 1);
const tokenizer = Tokenizer.train(['bench'], { vocabSize: 256 });
try {
  const times: Record<string, number[]> = { sha256: [], sizes: [] };
  for (let round = 0; round < 5; round++) {
    // A fresh copy each round, so no run profits from the verified-once cache of another.
    const dir = join(root, `ck-${round}`);
    await saveCheckpoint(dir, { config, params, tokenizer, stage: 'bench', stageConfig: {} });
    for (const mode of round % 2 ? ['sizes', 'sha256'] : ['sha256', 'sizes']) {
      setVerifyHashes(mode === 'sha256');
      const t0 = performance.now();
      const ck = loadCheckpoint(dir);
      times[mode]!.push(performance.now() - t0);
      disposeParams(ck.params);
    }
  }
  const fmt = (xs: number[]) => `median ${Math.round([...xs].sort((a, b) => a - b)[2]!)} ms (${Math.round(Math.min(...xs))}–${Math.round(Math.max(...xs))})`;
  console.log(`loadCheckpoint, ${countParams(config).toLocaleString('en-US')} params: sha256 ${fmt(times.sha256!)}; sizes only (--no-verify) ${fmt(times.sizes!)}`);
} finally {
  disposeParams(params);
  rmSync(root, { recursive: true, force: true });
}
