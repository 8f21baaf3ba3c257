/**
 * The fine-tuning pipeline end to end on tiny sizes: prepare (BPE + shards on a slice of tiny
 * Shakespeare) → pretrain → sft (Alpaca fixture) → lora on the sft checkpoint → generate with the
 * adapter; then the CLI as a user runs it: generate --adapter, lora merge, and one-line errors with
 * exit code 2 for a bad row and a bad config. The shipped configs/sft.yaml and configs/lora.yaml parse.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { disposeParams, loadCheckpoint } from '../src/checkpoint/model.js';
import { readManifest } from '../src/checkpoint/manifest.js';
import { loadConfig } from '../src/config/load.js';
import { LoraConfigSchema, PrepareConfigSchema, PretrainConfigSchema, SftConfigSchema } from '../src/config/stages.js';
import { prepare } from '../src/data/prepare.js';
import { generate } from '../src/model/generate.js';
import { applyAdapter } from '../src/model/lora.js';
import { promptIds } from '../src/model/prompt.js';
import { pretrain } from '../src/train/pretrain.js';
import { lora, sft } from '../src/train/sft.js';
import { setupLogger } from '../src/util/log.js';
import { ALPACA_30 } from './finetune-fixtures.js';
import { REPO, SHAKESPEARE_PATH } from './paths.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-ft-e2e-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

const loop = { batch_size: 4, eval_every: 0, save_every: 0, log_every: 1, seed: 1 };
const optim = { lr: 3e-3, warmup_steps: 1 };

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: REPO, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('pretrain → sft → lora → generate', () => {
  const dirs = { tokens: join(TMP, 'tokens'), pretrain: join(TMP, 'pretrain'), sft: join(TMP, 'sft'), lora: join(TMP, 'lora'), merged: join(TMP, 'merged') };

  test('library chain', async () => {
    const slice = join(TMP, 'shakespeare.txt');
    writeFileSync(slice, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 40_000));
    const prep = await prepare(PrepareConfigSchema.parse({ inputs: [slice], out_dir: dirs.tokens, tokenizer: { train: { vocab_size: 400 } }, val_fraction: 0.1 }));
    assert.equal(prep.vocabSize, 400);

    const pt = await pretrain(PretrainConfigSchema.parse({
      data: { dir: dirs.tokens }, out_dir: dirs.pretrain, optim,
      model: { arch: 'gpt2', vocab_size: 400, n_ctx: 64, n_layer: 1, n_embd: 32, n_head: 2 },
      train: { ...loop, max_steps: 3, eval_batches: 1 },
    }), { quiet: true });
    assert.equal(pt.step, 3);

    const s = await sft(SftConfigSchema.parse({ base: dirs.pretrain, out_dir: dirs.sft, optim, data: { path: ALPACA_30 }, train: { ...loop, max_steps: 3 } }), { quiet: true });
    assert.equal(s.step, 3);
    assert.ok(s.data.stats.truncated > 0, 'the 64-token context truncates some Alpaca rows (and says how many)');
    assert.equal(readManifest(dirs.sft).parent?.path, dirs.pretrain);

    const l = await lora(LoraConfigSchema.parse({ base: dirs.sft, out_dir: dirs.lora, optim: { ...optim, lr: 1e-2 }, data: { path: ALPACA_30 }, lora: { r: 4, alpha: 8, target_modules: ['q', 'v', 'up', 'down'] }, train: { ...loop, max_steps: 3 } }), { quiet: true });
    assert.equal(l.step, 3);
    assert.ok(l.trainableParams < l.baseParams / 10);
    assert.equal(readManifest(dirs.lora).parent?.path, dirs.sft);

    const model = loadCheckpoint(dirs.sft);
    const adapter = applyAdapter(model.params, dirs.lora);
    const ids = promptIds(model.tokenizer, 'Name a colour.', true);
    const g = generate({ ...model, params: adapter.params }, ids, { max_tokens: 8, stop: [], temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, forward: { loraScale: adapter.scale } });
    assert.ok(g.ids.length >= 1 && g.ids.length <= 8);
    assert.equal(g.promptTokens, ids.length);
    adapter.dispose();
    disposeParams(model.params);
  });

  test('CLI: generate --adapter, lora merge, and one-line errors (exit 2) for a bad row and a bad config', async () => {
    assert.ok(existsSync(join(dirs.lora, 'adapter_model.safetensors')), 'needs the library chain above');
    const gen = await cli(['generate', '--checkpoint', dirs.sft, '--adapter', dirs.lora, '--prompt', 'Hello', '--chat', '-n', '4', '-t', '0', '--json', '--backend', 'wasm', '--log-level', 'silent']);
    assert.equal(gen.code, 0, gen.stderr);
    assert.equal((JSON.parse(gen.stdout) as { finish_reason: string }).finish_reason !== undefined, true);

    const merge = await cli(['lora', 'merge', '--adapter', dirs.lora, '--out', dirs.merged, '--json', '--backend', 'wasm', '--log-level', 'silent']);
    assert.equal(merge.code, 0, merge.stderr);
    assert.equal((JSON.parse(merge.stdout) as { base: string }).base, dirs.sft);
    assert.equal(readManifest(dirs.merged).stage, 'lora-merge');

    const rows = readFileSync(ALPACA_30, 'utf8').trim().split('\n');
    rows[6] = '{"instruction": "x", "input": ""}';
    const bad = join(TMP, 'bad.jsonl');
    writeFileSync(bad, rows.join('\n') + '\n');
    const cfg = join(TMP, 'sft.yaml');
    writeFileSync(cfg, `base: ${dirs.pretrain}\ndata:\n  path: ${bad}\ntrain:\n  max_steps: 1\n  batch_size: 2\nout_dir: ${join(TMP, 'sft-bad')}\n`);
    const badRow = await cli(['sft', '--config', cfg, '--backend', 'wasm', '--log-level', 'silent']);
    assert.equal(badRow.code, 2);
    assert.equal(badRow.stderr.trim(), `llmctl sft: ${bad}: line 7: field 'output': missing (set data.skip_invalid: true to skip bad rows)`);

    const badCfg = await cli(['lora', '--config', 'configs/lora.yaml', '--set', 'lora.rank=4', '--log-level', 'silent']);
    assert.equal(badCfg.code, 2);
    assert.match(badCfg.stderr.trim(), /^llmctl lora: [^\n]*lora\.rank: unknown key$/);
  });

  test('the shipped configs parse', () => {
    const s = loadConfig(SftConfigSchema, join(REPO, 'configs/sft.yaml'));
    const l = loadConfig(LoraConfigSchema, join(REPO, 'configs/lora.yaml'));
    assert.equal(s.base, 'runs/pretrain');
    assert.equal(l.base, 'runs/pretrain');
    assert.equal(s.data.path, 'data/alpaca_en_demo.jsonl');
    assert.ok(existsSync(join(REPO, s.data.path)));
  });
});
