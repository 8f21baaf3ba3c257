/**
 * The CLI as a user runs it: `node --import tsx src/main.ts <command>` in child processes.
 * prepare → pretrain → generate on tiny configs, --json summaries, one-line config errors with exit
 * code 2, --set overrides reaching the manifest, and SIGINT → checkpoint → --resume.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readManifest, readTrainerState, verifyManifestFiles } from '../src/checkpoint/manifest.js';
import { REPO, SHAKESPEARE_PATH } from './paths.js';

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-cli-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

interface Run { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

function start(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
    cwd: REPO,
    env: { ...process.env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function finish(child: ChildProcess): Promise<Run> {
  let stdout = '', stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

const llmctl = (...args: string[]) => finish(start(args));

/** stderr minus pino's JSON log lines (everything the CLI prints itself). */
function plainStderr(r: Run): string[] {
  return r.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('{'));
}

function explain(r: Run): string {
  return `exit ${r.code} (signal ${r.signal})\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr.slice(-3000)}`;
}

const TEXT = join(TMP, 'shakespeare-20k.txt');
const TOKENS = join(TMP, 'tokens');
const CKPT = join(TMP, 'ckpt');

/** A pretrain config (YAML) with a tiny model; `train` lines can be replaced per test. */
function pretrainYaml(outDir: string, train = 'max_steps: 3, batch_size: 8, eval_every: 0, save_every: 0, log_every: 1', optim = 'lr: 0.01, warmup_steps: 2'): string {
  return [
    `data: { dir: ${TOKENS} }`,
    'model: { arch: gpt2, vocab_size: 300, n_ctx: 32, n_layer: 2, n_embd: 64, n_head: 2 }',
    `optim: { ${optim} }`,
    `train: { ${train} }`,
    `out_dir: ${outDir}`,
    '',
  ].join('\n');
}

function writeConfig(name: string, text: string): string {
  const path = join(TMP, name);
  writeFileSync(path, text);
  return path;
}

describe('prepare → pretrain → generate', () => {
  before(() => writeFileSync(TEXT, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 20_000)));

  test('prepare --json: exit 0, one JSON summary on stdout, shards on disk', async () => {
    const cfg = writeConfig('prepare.yaml', `inputs: [${TEXT}]\nout_dir: ${TOKENS}\ntokenizer: { train: { vocab_size: 300 } }\nval_fraction: 0.1\n`);
    const r = await llmctl('prepare', '--config', cfg, '--json');
    assert.equal(r.code, 0, explain(r));
    const s = JSON.parse(r.stdout) as Record<string, number | string>;
    assert.equal(s.out_dir, TOKENS);
    assert.equal(s.vocab_size, 300);
    assert.ok((s.train_tokens as number) > 0 && (s.val_tokens as number) > 0, r.stdout);
    const meta = JSON.parse(readFileSync(join(TOKENS, 'meta.json'), 'utf8')) as { splits: { train: { tokens: number } } };
    assert.equal(meta.splits.train.tokens, s.train_tokens);
    assert.ok(existsSync(join(TOKENS, 'tokenizer.json')), 'tokenizer saved with the shards');
  });

  test('pretrain with --set train.max_steps=5 over the file\'s 3: exit 0, the override is what ran and what the manifest records', async () => {
    const cfg = writeConfig('pretrain.yaml', pretrainYaml(CKPT));
    const r = await llmctl('pretrain', '--config', cfg, '--backend', 'wasm', '--json', '--set', 'train.max_steps=5', '--set', 'optim.weight_decay=0.05');
    assert.equal(r.code, 0, explain(r));
    const s = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(s.steps, 5);
    assert.equal(s.interrupted, false);
    assert.equal(s.tokens_seen, 5 * 8 * 32);
    assert.ok(Number.isFinite(s.train_loss) && Number.isFinite(s.val_loss), r.stdout);
    const m = readManifest(CKPT);
    assert.equal(m.stage, 'pretrain');
    const resolved = m.config as { train: { max_steps: number; batch_size: number }; optim: { weight_decay: number; lr: number; min_lr: number } };
    assert.equal(resolved.train.max_steps, 5);
    assert.equal(resolved.optim.weight_decay, 0.05);
    assert.equal(resolved.optim.lr, 0.01); // from the file, untouched
    assert.equal(resolved.optim.min_lr, 0.001); // derived default lr/10, resolved before saving
    assert.equal(readTrainerState(CKPT).step, 5);
    await verifyManifestFiles(CKPT, m);
    // pino's logs are JSON lines on stderr (not a TTY here); stdout held only the summary.
    const logs = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: number });
    assert.ok(logs.some((l) => l.msg === 'using tfjs backend: wasm'), r.stderr);
  });

  test('generate streams the prompt and its continuation; --json gives the same text as one JSON object', async () => {
    const args = ['generate', '--checkpoint', CKPT, '--prompt', 'ROMEO:', '--max-tokens', '12', '--temperature', '1', '--seed', '3', '--backend', 'wasm'];
    const plain = await llmctl(...args);
    assert.equal(plain.code, 0, explain(plain));
    assert.ok(plain.stdout.startsWith('ROMEO:') && plain.stdout.endsWith('\n'), JSON.stringify(plain.stdout));
    const json = await llmctl(...args, '--json');
    assert.equal(json.code, 0, explain(json));
    const g = JSON.parse(json.stdout) as { text: string; prompt_tokens: number; completion_tokens: number; finish_reason: string };
    assert.ok(g.completion_tokens >= 1 && g.completion_tokens <= 12, json.stdout);
    assert.ok(g.text.length > 0, 'generated some text');
    assert.ok(g.prompt_tokens >= 1, json.stdout);
    // Same seed → same sample; the streamed stdout is exactly prompt + text + newline.
    assert.equal(plain.stdout, `ROMEO:${g.text}\n`);
  });
});

describe('bad input: exit 2 with one line on stderr naming the file and the field', () => {
  // These fail before any training; stdout stays empty and stderr holds only the error line.
  const expectOneLine = (r: Run, line: string) => {
    assert.equal(r.code, 2, explain(r));
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, `${line}\n`);
  };

  test('a field of the wrong type', async () => {
    const bad = writeConfig('bad-type.yaml', pretrainYaml(join(TMP, 'unused'), 'max_steps: "five", batch_size: 8'));
    expectOneLine(await llmctl('pretrain', '--config', bad, '--backend', 'wasm'), `llmctl pretrain: ${bad}: train.max_steps: expected number, received string`);
  });

  test('an unknown key (a typo)', async () => {
    const bad = writeConfig('bad-key.yaml', pretrainYaml(join(TMP, 'unused'), undefined, 'lr: 0.01, lerning_rate: 3'));
    expectOneLine(await llmctl('pretrain', '--config', bad, '--backend', 'wasm'), `llmctl pretrain: ${bad}: optim.lerning_rate: unknown key`);
  });

  test('a missing config file', async () => {
    const missing = join(TMP, 'no-such.yaml');
    const r = await llmctl('pretrain', '--config', missing, '--backend', 'wasm');
    assert.equal(r.code, 2, explain(r));
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.ok(lines[0]!.startsWith(`llmctl pretrain: ${missing}: cannot read`), r.stderr);
  });

  test('no config file at all: says that --config is required', async () => {
    expectOneLine(
      await llmctl('pretrain', '--set', 'train.max_steps=3', '--backend', 'wasm'),
      'llmctl pretrain: --config is required: this command reads its settings from a YAML/JSON file (e.g. --config configs/pretrain.yaml); without one, data is missing',
    );
  });

  test('a bad flag value names the flag (a flag named like its setting needs no mapping); a required flag is named; the example config is the command\'s', async () => {
    expectOneLine(await llmctl('serve', '--config', 'configs/serve.yaml', '--port', 'abc'), 'llmctl serve: --port: expected a number');
    expectOneLine(await llmctl('serve', '--config', 'configs/serve.yaml', '--max-num-seqs', '0'), 'llmctl serve: --max-num-seqs 0: engine.max_num_seqs: must be > 0');
    expectOneLine(await llmctl('eval', '--checkpoint', 'runs/x', '--tasks', 'arc_easy', '--limit', 'abc'), 'llmctl eval: --limit: expected a number');
    expectOneLine(await llmctl('serve'), 'llmctl serve: --checkpoint is required (or checkpoint: in a --config file)');
    expectOneLine(await llmctl('rm'), 'llmctl rm: --config is required: this command reads its settings from a YAML/JSON file (e.g. --config configs/rm.yaml); without one, base is missing');
  });

  test('an out-of-range --set value is reported on the field it set', async () => {
    const cfg = writeConfig('ok.yaml', pretrainYaml(join(TMP, 'unused')));
    const r = await llmctl('pretrain', '--config', cfg, '--set', 'train.batch_size=-1', '--backend', 'wasm');
    assert.equal(r.code, 2, explain(r));
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    // (The message is prefixed with the config file's name even though the bad value came from --set.)
    assert.ok(lines[0]!.startsWith('llmctl pretrain: ') && lines[0]!.endsWith('train.batch_size: must be > 0'), r.stderr);
  });
});

describe('SIGINT', () => {
  test('mid-run Ctrl-C saves a resumable checkpoint and exits 130; --resume finishes the same run', async () => {
    const out = join(TMP, 'interrupted');
    const steps = 40;
    const cfg = writeConfig('sigint.yaml', pretrainYaml(out, `max_steps: ${steps}, batch_size: 8, eval_every: 0, save_every: 0, log_every: 1`));
    const child = start(['pretrain', '--config', cfg, '--backend', 'wasm', '--json']);
    const done = finish(child);
    // Wait for the first logged step (training is under way and SIGINT is handled by the trainer).
    const metrics = join(out, 'metrics.jsonl');
    let log = '';
    child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    const t0 = Date.now();
    while (!log.includes('"step":1,')) {
      if (child.exitCode !== null) assert.fail(`pretrain exited before logging a step:\n${explain(await done)}`);
      if (Date.now() - t0 > 60_000) assert.fail('no metrics.jsonl line after 60 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill('SIGINT');
    const r = await done;
    assert.equal(r.code, 130, explain(r));
    const s = JSON.parse(r.stdout) as { steps: number; interrupted: boolean };
    assert.equal(s.interrupted, true);
    const state = readTrainerState(out);
    assert.ok(state.step >= 1 && state.step < steps, `saved at step ${state.step}`);
    assert.equal(s.steps, state.step);
    assert.ok(existsSync(join(out, 'optimizer.safetensors')), 'optimizer state saved');
    await verifyManifestFiles(out, readManifest(out));
    assert.ok(plainStderr(r).length === 0, `no error lines: ${plainStderr(r).join('\n')}`);
    assert.ok(r.stderr.includes('SIGINT'), 'the trainer logged the interrupt');

    const resumed = await llmctl('pretrain', '--config', cfg, '--backend', 'wasm', '--json', '--resume');
    assert.equal(resumed.code, 0, explain(resumed));
    const rs = JSON.parse(resumed.stdout) as { steps: number; interrupted: boolean; tokens_seen: number };
    assert.equal(rs.steps, steps);
    assert.equal(rs.interrupted, false);
    assert.equal(rs.tokens_seen, steps * 8 * 32, 'tokens counted across both runs');
    assert.equal(readTrainerState(out).step, steps);
    // Every step logged exactly once across the two processes.
    const logged = readFileSync(metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss?: number }).filter((l) => 'loss' in l);
    assert.deepEqual(logged.map((l) => l.step), Array.from({ length: steps }, (_, i) => i + 1));
    // The resumed process logged that it resumed.
    assert.ok(resumed.stderr.split('\n').some((l) => l.includes('"resume":true')), 'pretrain log says resume: true');
  });
});
