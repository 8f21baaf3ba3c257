/**
 * Checkpoints are never overwritten, mixed, corrupted or silently lost (issue 7), in-process:
 * the output-dir policy (refuse / --overwrite / --resume), the lock, resume compatibility, recovery of a
 * save interrupted between its two renames, integrity checks on load, no non-finite saves, SIGTERM,
 * a full disk, the memory estimate, and LoRA dropout through the seeded RNG.
 * (Kill -9 at an exact point of a real save, via LLMCTL_FAULT, is in safety-cli.test.ts.)
 */
import { test, describe, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../src/backend/index.js';
import { recoverDir } from '../src/checkpoint/dir.js';
import { trainingSummary } from '../src/commands/common.js';
import { lockPath } from '../src/checkpoint/lock.js';
import { checkManifestFiles, readManifest, readTrainerState, writeManifest } from '../src/checkpoint/manifest.js';
import { MODEL_FILE, disposeParams, loadCheckpoint, saveCheckpoint } from '../src/checkpoint/model.js';
import { openOutputDir } from '../src/checkpoint/output.js';
import { readSafetensors, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { setVerifyHashes } from '../src/checkpoint/verify.js';
import { OptimSchema, TrainLoopSchema } from '../src/config/schemas.js';
import { PrepareConfigSchema, PretrainConfigSchema } from '../src/config/stages.js';
import { prepare } from '../src/data/prepare.js';
import type { LmBatch } from '../src/data/shards.js';
import { type ModelConfig, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { crossEntropy } from '../src/train/losses.js';
import { estimateMemory } from '../src/train/memory.js';
import { pretrain } from '../src/train/pretrain.js';
import { lora, mergeLora } from '../src/train/sft.js';
import { type BatchSource, NonFiniteLossError, type TrainJob, train } from '../src/train/trainer.js';
import { InputError } from '../src/util/errors.js';
import { setFaultHook } from '../src/util/fault.js';
import { setupLogger } from '../src/util/log.js';
import type { Rng } from '../src/util/rng.js';
import { loraConfig, writeTinyBase } from './finetune-fixtures.js';
import { SHAKESPEARE_PATH } from './paths.js';

await initBackend('wasm');
setupLogger('silent');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-safety-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));
afterEach(() => setFaultHook(undefined));
let n = 0;
const fresh = (name: string) => join(TMP, `${name}-${n++}`);

// A tiny model trained on "next token = previous + 1" (as in trainer.test.ts).
const MODEL: ModelConfig = resolveModelConfig({ arch: 'llama', vocab_size: 16, n_ctx: 8, n_layer: 1, n_embd: 16, n_head: 2, n_kv_head: 1, n_inner: 32 });
const TOKENIZER = Tokenizer.train(['tiny corpus for a tiny tokenizer'], { vocabSize: 259 });

function source(): BatchSource<LmBatch> {
  return {
    next(rng: Rng) {
      const x: number[] = [], y: number[] = [];
      for (let b = 0; b < 4; b++) {
        const s = rng.nextInt(16);
        for (let t = 0; t < 8; t++) {
          x.push((s + t) % 16);
          y.push((s + t + 1) % 16);
        }
      }
      return { inputs: tf.tensor2d(x, [4, 8], 'int32'), targets: tf.tensor1d(y, 'int32') };
    },
    tokens: (b) => b.targets.size,
    dispose: (b) => { b.inputs.dispose(); b.targets.dispose(); },
  };
}

function variables(seed: number): Record<string, tf.Variable> {
  return Object.fromEntries(Object.entries(initParams(MODEL, seed)).map(([k, t]) => [k, tf.variable(t, true)]));
}

function job(outDir: string, params: Record<string, tf.Variable>, loop: Record<string, unknown> = {}, extra: Partial<TrainJob<LmBatch>> = {}): TrainJob<LmBatch> {
  return {
    stage: 'test',
    outDir,
    params,
    loss: (b) => tf.tidy(() => crossEntropy(tf.reshape(forward(params, MODEL, b.inputs, { training: true }).logits, [-1, 16]) as tf.Tensor2D, b.targets) as tf.Scalar),
    batches: source(),
    save: (payload) => saveCheckpoint(outDir, { config: MODEL, params, tokenizer: TOKENIZER, stage: 'test', stageConfig: { loop }, metrics: payload.metrics, trainer: payload }),
    optim: OptimSchema.parse({ lr: 1e-2, warmup_steps: 2 }),
    loop: TrainLoopSchema.parse({ max_steps: 4, batch_size: 4, eval_every: 0, save_every: 0, log_every: 1, seed: 7, ...loop }),
    quiet: true,
    ...extra,
  };
}

/** Every file of a directory, as bytes (to prove it was not touched). */
function snapshotDir(dir: string): Record<string, string> {
  return Object.fromEntries(readdirSync(dir).sort().map((f) => [f, readFileSync(join(dir, f)).toString('base64')]));
}

async function trained(dir: string, loop: Record<string, unknown> = {}): Promise<void> {
  const p = variables(1);
  await train(job(dir, p, loop));
  disposeParams(p);
}

describe('the output directory', () => {
  test('a new run refuses an existing checkpoint, touching nothing (weights and metrics.jsonl); --overwrite replaces it', async () => {
    const dir = fresh('existing');
    await trained(dir);
    const before = snapshotDir(dir);
    assert.ok(before['metrics.jsonl'], 'the first run wrote its log');
    const p = variables(2);
    await assert.rejects(train(job(dir, p)), (e: Error) => {
      assert.ok(e instanceof InputError, String(e));
      assert.match(e.message, /already holds a checkpoint \(stage test, step 4, saved .*\); pass --overwrite to replace it or --resume to continue it$/);
      assert.ok(e.message.startsWith(`${dir}: `));
      return true;
    });
    assert.deepEqual(snapshotDir(dir), before, 'checkpoint and log untouched');
    // The writer alone applies the same policy (import, lora merge, any one-shot stage).
    await assert.rejects(saveCheckpoint(dir, { config: MODEL, params: p, tokenizer: TOKENIZER, stage: 'x', stageConfig: {} }), /already holds a checkpoint/);
    assert.deepEqual(snapshotDir(dir), before);
    // --overwrite: a complete new checkpoint, whose log has only the new run's steps.
    const r = await train(job(dir, p, { max_steps: 2 }, { overwrite: true }));
    assert.equal(r.step, 2);
    assert.equal(readTrainerState(dir).step, 2);
    assert.deepEqual(readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step), [1, 2]);
    disposeParams(p);
  });

  test('never replaces a directory that is not a checkpoint, even with --overwrite', async () => {
    const dir = fresh('not-a-checkpoint');
    mkdirSync(dir);
    writeFileSync(join(dir, 'notes.txt'), 'precious');
    const p = variables(1);
    await assert.rejects(train(job(dir, p, {}, { overwrite: true })), /not-a-checkpoint-\d+: exists and is not an llmctl checkpoint \(1 other entries\); choose another output directory/);
    assert.equal(readFileSync(join(dir, 'notes.txt'), 'utf8'), 'precious');
    disposeParams(p);
  });

  test('--resume with nothing to resume is an error (not a fresh start)', async () => {
    const dir = fresh('nothing');
    assert.throws(() => openOutputDir(dir, { resume: true }), (e: Error) =>
      e instanceof InputError && e.message === `${dir}: nothing to resume (no trainer_state.json: no trainer checkpoint there); run without --resume to start a new run`);
    assert.ok(!existsSync(lockPath(dir)), 'lock released after the refusal');
  });

  test('lora merge refuses to write over its own base (or adapter) without --overwrite', async () => {
    const base = fresh('merge-base');
    await writeTinyBase(base);
    const adapter = fresh('merge-adapter');
    await lora(loraConfig(base, adapter, { train: { max_steps: 1 } }), { quiet: true });
    const before = snapshotDir(base);
    await assert.rejects(mergeLora({ adapter, out: base }), /^InputError: --out .*merge-base-\d+: is the base checkpoint being merged; choose another directory \(or pass --overwrite to replace it\)$/);
    await assert.rejects(mergeLora({ adapter, out: adapter }), /is the adapter being merged/);
    assert.deepEqual(snapshotDir(base), before);
  });
});

describe('the lock', () => {
  const lockOf = (dir: string, info: Record<string, unknown>) => {
    mkdirSync(TMP, { recursive: true });
    writeFileSync(lockPath(dir), JSON.stringify(info));
  };

  test('a second writer fails at once, naming the holder; the lock goes away with the run', async () => {
    const dir = fresh('locked');
    // The parent process (the test runner) is alive on this host and started before "now".
    lockOf(dir, { pid: process.ppid, host: hostname(), started_at: new Date().toISOString(), command: 'pretrain --config x.yaml' });
    const p = variables(1);
    await assert.rejects(train(job(dir, p)), (e: Error) => {
      assert.ok(e instanceof InputError);
      assert.equal(e.message.split(' (pid')[0], `${dir}: in use by another run`);
      assert.match(e.message, new RegExp(`pid ${process.ppid} on ${hostname()}, since .*: llmctl pretrain --config x\\.yaml\\); wait for it to finish, or delete .*\\.lock if that run is gone$`));
      return true;
    });
    assert.ok(!existsSync(dir), 'nothing written');
    rmSync(lockPath(dir));
    // Held while training (checked from inside the loop), released after.
    let held: Record<string, unknown> | undefined;
    await train(job(dir, p, { max_steps: 2 }, { onStep: () => { held ??= JSON.parse(readFileSync(lockPath(dir), 'utf8')) as Record<string, unknown>; } }));
    assert.equal(held?.pid, process.pid);
    assert.equal(held?.host, hostname());
    assert.ok(!existsSync(lockPath(dir)), 'released');
    disposeParams(p);
  });

  test('stale locks are taken over: dead pid on this host, or a live pid that started after the lock (reused)', async () => {
    const p = variables(1);
    for (const info of [
      { pid: 2 ** 22 + 4321, host: hostname(), started_at: new Date().toISOString(), command: 'x' },
      { pid: process.ppid, host: hostname(), started_at: '2001-01-01T00:00:00.000Z', command: 'x' },
      'not json: its writer died mid-write',
    ]) {
      const dir = fresh('stale');
      if (typeof info === 'string') writeFileSync(lockPath(dir), info);
      else lockOf(dir, info);
      const r = await train(job(dir, p, { max_steps: 1 }));
      assert.equal(r.step, 1, JSON.stringify(info));
    }
    // Another host's lock is never judged from here.
    const dir = fresh('remote');
    lockOf(dir, { pid: 1, host: 'some-other-host', started_at: '2001-01-01T00:00:00.000Z', command: 'x' });
    await assert.rejects(train(job(dir, p)), /in use by another run \(pid 1 on some-other-host/);
    disposeParams(p);
  });
});

describe('resume', () => {
  let data = '';
  const cfg = (out: string, over: { model?: Record<string, unknown>; train?: Record<string, unknown>; optim?: Record<string, unknown>; dataDir?: string } = {}) =>
    PretrainConfigSchema.parse({
      data: { dir: over.dataDir ?? data },
      model: { arch: 'gpt2', vocab_size: 300, n_ctx: 16, n_layer: 1, n_embd: 16, n_head: 2, ...over.model },
      optim: { lr: 1e-2, warmup_steps: 1, ...over.optim },
      train: { max_steps: 2, batch_size: 4, eval_every: 0, save_every: 0, log_every: 1, ...over.train },
      out_dir: out,
    });
  const prepared = (async () => {
    const text = join(TMP, 'resume.txt');
    writeFileSync(text, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 6000));
    data = join(TMP, 'resume-tokens');
    await prepare(PrepareConfigSchema.parse({ inputs: [text], out_dir: data, tokenizer: { train: { vocab_size: 300 } } }));
  })();

  test('model dropout is drawn from the seeded RNG: identical runs give identical losses, and resume reproduces them', async () => {
    await prepared;
    const drop = { model: { dropout: 0.2 }, train: { max_steps: 4 } };
    const a = await pretrain(cfg(fresh('mdrop-a'), drop), { quiet: true });
    const b = await pretrain(cfg(fresh('mdrop-b'), drop), { quiet: true });
    assert.deepEqual(b.losses, a.losses);
    const off = await pretrain(cfg(fresh('mdrop-off'), { train: { max_steps: 4 } }), { quiet: true });
    assert.notDeepEqual(off.losses, a.losses, 'dropout is really on');
    const split = fresh('mdrop-split');
    const first = await pretrain(cfg(split, { model: { dropout: 0.2 }, train: { max_steps: 2 } }), { quiet: true });
    const rest = await pretrain(cfg(split, drop), { quiet: true, resume: true });
    const resumed = [...first.losses, ...rest.losses];
    for (let i = 0; i < 4; i++) assert.ok(Math.abs(resumed[i]! - a.losses[i]!) < 1e-5, `step ${i + 1}: ${resumed[i]} vs ${a.losses[i]}`);
  });

  test('a changed architecture, optimizer or data is refused naming the field; max_steps may change', async () => {
    await prepared;
    const out = fresh('resume');
    await pretrain(cfg(out), { quiet: true });
    const before = snapshotDir(out);
    const refused = async (c: ReturnType<typeof cfg>, re: RegExp) => {
      await assert.rejects(pretrain(c, { quiet: true, resume: true }), (e: Error) => e instanceof InputError && re.test(e.message) || assert.fail(e.message));
      assert.deepEqual(snapshotDir(out), before, 'checkpoint untouched');
    };
    const where = `${join(out, 'manifest.json')}: cannot resume: `;
    await refused(cfg(out, { model: { n_layer: 2 }, train: { max_steps: 3 } }), new RegExp(`^${where.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}model\\.n_layer is 1 in the checkpoint but 2 now; a resumed run may change only train\\.max_steps, `));
    await refused(cfg(out, { optim: { lr: 0.5 }, train: { max_steps: 3 } }), /cannot resume: optim\.lr is 0\.01 in the checkpoint but 0\.5 now/);
    await refused(cfg(out, { train: { max_steps: 3, batch_size: 8 } }), /cannot resume: train\.batch_size is 4 in the checkpoint but 8 now/);
    // Same path, different tokens: re-prepared from other text.
    const other = join(TMP, 'other-tokens');
    cpSync(data, other, { recursive: true });
    const text2 = join(TMP, 'resume2.txt');
    writeFileSync(text2, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(6000, 12000));
    await prepare(PrepareConfigSchema.parse({ inputs: [text2], out_dir: other, tokenizer: { from: data } }));
    await refused(cfg(out, { dataDir: other, train: { max_steps: 3 } }), /cannot resume: the data \(sha256\) is [0-9a-f]{12}… in the checkpoint but [0-9a-f]{12}… now/);
    // What may change: max_steps (and the other listed settings), and the path to the same data.
    const copy = join(TMP, 'same-tokens');
    cpSync(data, copy, { recursive: true });
    const r = await pretrain(cfg(out, { dataDir: copy, train: { max_steps: 3, log_every: 3 } }), { quiet: true, resume: true });
    assert.equal(r.step, 3);
    assert.equal(r.losses.length, 1);
  });
});

describe('recovery of an interrupted save', () => {
  const deadPid = 2 ** 22 + 777;

  async function checkpointAt(dir: string, seed: number): Promise<void> {
    const p = initParams(MODEL, seed);
    await saveCheckpoint(dir, { config: MODEL, params: p, tokenizer: TOKENIZER, stage: 'test', stageConfig: { seed } });
    disposeParams(p);
  }
  const wte = (dir: string) => {
    const ck = loadCheckpoint(dir);
    const v = Array.from(ck.params['wte.weight']!.dataSync().slice(0, 4));
    disposeParams(ck.params);
    return v;
  };

  test('crash between the two renames, new copy complete: the loader finishes the swap and cleans up', async () => {
    const root = fresh('swap');
    const dir = join(root, 'ck');
    await checkpointAt(join(root, 'staging-old'), 1);
    await checkpointAt(join(root, 'staging-new'), 2);
    const want = wte(join(root, 'staging-new'));
    // What a process killed after `rename(ck → .ck.old-*)` and before `rename(.ck.tmp-* → ck)` leaves:
    cpSync(join(root, 'staging-old'), join(root, `.ck.old-${deadPid}-aa`), { recursive: true });
    cpSync(join(root, 'staging-new'), join(root, `.ck.tmp-${deadPid}-bb`), { recursive: true });
    mkdirSync(join(root, `.ck.tmp-${deadPid + 1}-cc`)); // another killed save, never finished
    assert.ok(!existsSync(dir));
    assert.deepEqual(wte(dir), want, 'the newest complete state is what loads');
    assert.deepEqual(readdirSync(root).filter((f) => f.startsWith('.')), [], 'no leftovers');
  });

  test('crash between the renames with no complete new copy: the old checkpoint is put back', async () => {
    const root = fresh('restore');
    await checkpointAt(join(root, 'staging-old'), 1);
    const want = wte(join(root, 'staging-old'));
    cpSync(join(root, 'staging-old'), join(root, `.ck.old-${deadPid}-aa`), { recursive: true });
    mkdirSync(join(root, `.ck.tmp-${deadPid}-bb`)); // no manifest: killed while filling
    const p = variables(3);
    // The trainer's --resume path recovers too (through the output-dir policy) before looking for trainer_state.json.
    assert.throws(() => openOutputDir(join(root, 'ck'), { resume: true }), /nothing to resume/);
    assert.deepEqual(wte(join(root, 'ck')), want);
    assert.deepEqual(readdirSync(root).filter((f) => f.startsWith('.')), []);
    disposeParams(p);
  });

  test('leftovers of live processes are left alone', () => {
    const root = fresh('live');
    mkdirSync(join(root, `.ck.tmp-${process.pid}-aa`), { recursive: true });
    mkdirSync(join(root, `.ck.old-${process.ppid}-bb`));
    assert.deepEqual(recoverDir(join(root, 'ck')), []);
    assert.equal(readdirSync(root).length, 2);
  });
});

describe('integrity on load', () => {
  async function saved(dir: string): Promise<void> {
    const p = initParams(MODEL, 4);
    await saveCheckpoint(dir, { config: MODEL, params: p, tokenizer: TOKENIZER, stage: 'test', stageConfig: {} });
    disposeParams(p);
  }
  /** Offset of the first tensor byte in a safetensors file. */
  const dataStart = (buf: Buffer) => 8 + Number(buf.readBigUInt64LE(0));

  test('one flipped bit in the weights is refused (sha256); --no-verify checks sizes only; truncation always fails', async () => {
    const dir = fresh('flip');
    await saved(dir);
    const path = join(dir, MODEL_FILE);
    const buf = readFileSync(path);
    buf[dataStart(buf)]! ^= 1; // lowest mantissa bit of the first weight: still a finite number
    writeFileSync(path, buf);
    assert.throws(() => loadCheckpoint(dir), (e: Error) =>
      e.message.startsWith(`${path}: does not match manifest.json (expected ${buf.length} bytes sha256 `) && /found \d+ bytes sha256 [0-9a-f]{12}…\): the file is damaged/.test(e.message));
    setVerifyHashes(false);
    try {
      disposeParams(loadCheckpoint(dir).params); // same size: accepted without hashing
      writeFileSync(path, buf.subarray(0, buf.length - 4));
      assert.throws(() => loadCheckpoint(dir), new RegExp(`expected ${buf.length} bytes sha256 [0-9a-f]{12}…, found ${buf.length - 4} bytes\\)`));
    } finally {
      setVerifyHashes(true);
    }
  });

  test('NaN or Inf inside the weights is refused even when the hashes match', async () => {
    const dir = fresh('nan');
    await saved(dir);
    const path = join(dir, MODEL_FILE);
    const { tensors } = readSafetensors(path);
    (tensors['model.layers.0.mlp.up_proj.weight']!.data as Float32Array)[5] = Number.POSITIVE_INFINITY; // HF names on disk
    writeSafetensors(path, tensors, { format: 'pt' });
    // Re-hash, as a writer without the finite check (or an old llmctl) would have.
    const m = readManifest(dir);
    const { hashDir } = await import('../src/checkpoint/dir.js');
    writeManifest(dir, { ...m, files: await hashDir(dir, Object.keys(m.files)) });
    checkManifestFiles(dir, readManifest(dir), true);
    // [out, in] on disk, [in, out] in memory: file index 5 (row 0, column 5) is 5 × n_inner(32) = 160.
    assert.throws(() => loadCheckpoint(dir), new RegExp(`^NonFiniteWeightsError: ${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: tensor 'h\\.0\\.mlp\\.up_proj\\.weight' holds a non-finite value \\(Infinity at index 160\\); refusing to use it$`));
  });

  test('the writer refuses non-finite weights and leaves the previous checkpoint as it was', async () => {
    const dir = fresh('write-nan');
    await saved(dir);
    const before = snapshotDir(dir);
    const p = initParams(MODEL, 5);
    const bad = { ...p, 'ln_f.weight': tf.fill([16], NaN) };
    await assert.rejects(saveCheckpoint(dir, { config: MODEL, params: bad, tokenizer: TOKENIZER, stage: 'x', stageConfig: {}, overwrite: true }), /not saving weights: tensor 'model\.norm\.weight' holds a non-finite value \(NaN at index 0\)/);
    assert.deepEqual(snapshotDir(dir), before);
    disposeParams(bad);
    disposeParams(p);
  });
});

describe('the trainer', () => {
  test('weights that turn non-finite are never saved; the error names the step actually kept', async () => {
    const dir = fresh('diverge');
    const p = variables(1);
    // A step that blows the weights up without a NaN loss (as a huge learning rate can): poison one
    // weight after step 3, just before its periodic save.
    const onStep = ({ step }: { step: number }) => { if (step === 3) p['ln_f.weight']!.assign(tf.fill([16], Number.POSITIVE_INFINITY)); };
    await assert.rejects(train(job(dir, p, { max_steps: 6, save_every: 1 }, { onStep })), (e: Error) => {
      assert.ok(e instanceof NonFiniteLossError);
      assert.equal(e.message, `non-finite values in ln_f.weight after step 3; not saved, ${dir} keeps the checkpoint of step 2. Try a lower optim.lr or a smaller optim.grad_clip.`);
      return true;
    });
    assert.equal(readTrainerState(dir).step, 2);
    const ck = loadCheckpoint(dir); // verifies hashes and finiteness
    disposeParams(ck.params);
    // Without any save yet, it says so (not "the last good checkpoint").
    disposeParams(p);
    const p2 = variables(1);
    const dir2 = fresh('diverge-early');
    const onStep1 = ({ step }: { step: number }) => { if (step === 1) p2['ln_f.weight']!.assign(tf.fill([16], NaN)); };
    await assert.rejects(train(job(dir2, p2, { max_steps: 3, save_every: 2 }, { onStep: onStep1 })), new RegExp(`non-finite loss at step 2; stopped without saving, no checkpoint of this run was saved in ${dir2.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\.`));
    assert.ok(!existsSync(dir2));
    disposeParams(p2);
  });

  test('SIGTERM is handled like SIGINT: finish the step, save, report the signal', async () => {
    const dir = fresh('sigterm');
    const p = variables(1);
    const r = await train(job(dir, p, { max_steps: 10 }, { onStep: ({ step }) => { if (step === 3) process.emit('SIGTERM', 'SIGTERM'); } }));
    assert.equal(r.interrupted, true);
    assert.equal(r.signal, 'SIGTERM');
    assert.equal(r.step, 3);
    assert.equal(readTrainerState(dir).step, 3);
    assert.equal(process.listenerCount('SIGTERM'), 0, 'handler removed after the run');
    // The CLI exits 143 after saving (130 for Ctrl-C), so schedulers see the signal.
    const saved = process.exitCode;
    try {
      trainingSummary(r);
      assert.equal(process.exitCode, 143);
      trainingSummary({ ...r, signal: 'SIGINT' });
      assert.equal(process.exitCode, 130);
    } finally {
      process.exitCode = saved;
    }
    disposeParams(p);
  });

  test('a full disk: the error names the directory, the step and the space a save needs; the previous checkpoint stays', async () => {
    const dir = fresh('enospc');
    const p = variables(1);
    let saves = 0;
    setFaultHook((point) => {
      if (point === 'save:fill' && ++saves === 2) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    });
    await assert.rejects(train(job(dir, p, { max_steps: 6, save_every: 2 })), (e: Error) => {
      // weights + AdamW's two moments, float32: 3 × 4 bytes × parameters.
      const params = Object.values(p).reduce((s, v) => s + v.size, 0);
      const kib = Math.ceil((3 * 4 * params) / 1024);
      assert.equal(e.message,
        `saving step 4 failed: ${dir}: no space left on device while saving a checkpoint (the previous one is intact); a save needs about ${kib} KiB free: ` +
        `the new copy is written beside the old one, so about twice the checkpoint's size in all (${dir} keeps the checkpoint of step 2)`);
      return true;
    });
    assert.equal(readTrainerState(dir).step, 2);
    assert.deepEqual(readdirSync(TMP).filter((f) => f.startsWith(`.enospc`) && !f.endsWith('.lock')), [], 'no temp dir left');
    disposeParams(p);
  });
});

describe('memory estimate', () => {
  test('hand-computed figures for a tiny GPT-2', () => {
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 16, n_ctx: 8, n_layer: 1, n_embd: 16, n_head: 2, n_inner: 64 });
    // wte 16·16 + wpe 8·16 + ln_1 2·16 + q,k,v,o 4·(16·16+16) + ln_2 2·16 + up 16·64+64 + down 64·16+16 + ln_f 2·16
    const params = 256 + 128 + 32 + 4 * 272 + 32 + 1088 + 1040 + 32;
    assert.equal(params, 3696);
    const e = estimateMemory(c, 4, { training: true });
    assert.equal(e.params, 3696);
    assert.equal(e.weightBytes, 4 * 4 * 3696); // weights, gradients, m, v
    // per token: 1 layer × (10·16 + 3·64 + 2·2·8) + 3·16 = 432 floats; × batch 4 × ctx 8 × 4 bytes
    assert.equal(e.activationBytes, 4 * 4 * 8 * 432);
    assert.equal(e.total, 59136 + 55296);
  });

  test('an absurd config is refused at once with the estimate, before anything is allocated; --force skips the check', async () => {
    const tokens = join(TMP, 'mem-tokens');
    const text = join(TMP, 'mem.txt');
    writeFileSync(text, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 3000));
    await prepare(PrepareConfigSchema.parse({ inputs: [text], out_dir: tokens, tokenizer: { train: { vocab_size: 260 } } }));
    const cfg = PretrainConfigSchema.parse({
      data: { dir: tokens }, model: { vocab_size: 300, n_ctx: 1e9, n_layer: 2, n_embd: 65536, n_head: 8 },
      train: { max_steps: 1, batch_size: 1 }, out_dir: fresh('absurd'),
    });
    const t0 = performance.now();
    const tensorsBefore = tf.memory().numTensors;
    await assert.rejects(pretrain(cfg, { quiet: true }), (e: Error) =>
      e instanceof InputError && /^model: this model needs about [\d.]+ GiB \([\d,]+ parameters: [\d.]+ GiB of weights, gradients and optimizer moments, [\d.]+ GiB of activations\) but about [\d.]+ (GiB|MiB) is available; shrink the model or batch, or pass --force to try anyway$/.test(e.message) || assert.fail(e.message));
    assert.ok(performance.now() - t0 < 5000, 'refused at once');
    assert.equal(tf.memory().numTensors, tensorsBefore, 'nothing allocated');
    assert.ok(!existsSync(cfg.out_dir));
  });
});

describe('LoRA dropout', () => {
  test('two identical runs with dropout give identical losses; resume reproduces them', async () => {
    const base = fresh('drop-base');
    await writeTinyBase(base);
    const c = (out: string, steps: number) => loraConfig(base, out, { lora: { dropout: 0.3 }, train: { max_steps: steps } });
    const a = await lora(c(fresh('drop-a'), 4), { quiet: true });
    const b = await lora(c(fresh('drop-b'), 4), { quiet: true });
    assert.deepEqual(b.losses, a.losses);
    // Dropout is really on: without it the losses differ.
    const off = await lora(loraConfig(base, fresh('drop-off'), { lora: { dropout: 0 }, train: { max_steps: 4 } }), { quiet: true });
    assert.notDeepEqual(off.losses, a.losses);
    const split = fresh('drop-split');
    const first = await lora(c(split, 2), { quiet: true });
    const rest = await lora(c(split, 4), { quiet: true, resume: true });
    const resumed = [...first.losses, ...rest.losses];
    for (let i = 0; i < 4; i++) assert.ok(Math.abs(resumed[i]! - a.losses[i]!) < 1e-5, `step ${i + 1}: ${resumed[i]} vs ${a.losses[i]}`);
  });
});
