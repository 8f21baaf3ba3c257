/**
 * Issue 7 through the CLI, in child processes: kill -9 at an exact point of a save (LLMCTL_FAULT) then
 * --resume gives the uninterrupted run's weights; an existing out_dir is refused with exit 2; import
 * honours --config/--set; flag errors blame the flag; --stop decodes escapes; one info line says which
 * backend runs; every flag is described and every command has an example; the README lists only
 * commands that exist.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yargs from 'yargs';
import { initBackend } from '../src/backend/index.js';
import { readTrainerState } from '../src/checkpoint/manifest.js';
import { disposeParams, loadCheckpoint } from '../src/checkpoint/model.js';
import { globalOptions } from '../src/commands/global.js';
import { COMMANDS } from '../src/commands/index.js';
import { PrepareConfigSchema, PretrainConfigSchema } from '../src/config/stages.js';
import { prepare } from '../src/data/prepare.js';
import { pretrain } from '../src/train/pretrain.js';
import { canShowProgressLine, setupLogger } from '../src/util/log.js';
import { REPO, SHAKESPEARE_PATH, STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');
setupLogger('silent');
const TMP = mkdtempSync(join(tmpdir(), 'llmctl-safety-cli-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

interface Run { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

function llmctl(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: REPO, env: { ...process.env, NO_COLOR: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
const explain = (r: Run) => `exit ${r.code} (signal ${r.signal})\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr.slice(-3000)}`;
/** stderr minus pino's JSON lines: what the CLI itself printed. */
const plain = (r: Run) => r.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('{'));
const logLines = (r: Run) => r.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string });

describe('kill -9 in the middle of a save', () => {
  test('killed between the two renames of the step-4 save (the first that replaces one); --resume recovers it and ends on the uninterrupted weights', async () => {
    const text = join(TMP, 'text.txt');
    writeFileSync(text, readFileSync(SHAKESPEARE_PATH, 'utf8').slice(0, 6000));
    const tokens = join(TMP, 'tokens');
    await prepare(PrepareConfigSchema.parse({ inputs: [text], out_dir: tokens, tokenizer: { train: { vocab_size: 300 } } }));
    const config = (out: string) => ({
      data: { dir: tokens }, model: { arch: 'gpt2', vocab_size: 300, n_ctx: 16, n_layer: 1, n_embd: 32, n_head: 2 },
      optim: { lr: 0.01, warmup_steps: 2 }, train: { max_steps: 6, batch_size: 4, eval_every: 0, save_every: 2, log_every: 1 }, out_dir: out,
    });
    const straight = join(TMP, 'straight');
    await pretrain(PretrainConfigSchema.parse(config(straight)), { quiet: true });

    const out = join(TMP, 'killed');
    const cfg = join(TMP, 'killed.json');
    writeFileSync(cfg, JSON.stringify(config(out)));
    const killed = await llmctl(['pretrain', '--config', cfg, '--backend', 'wasm'], { LLMCTL_FAULT: 'save:swapped-aside:1' });
    assert.equal(killed.signal, 'SIGKILL', explain(killed));
    // What kill -9 left: no checkpoint at the final path, the step-2 one aside, the complete step-4 one in a temp dir.
    assert.ok(!existsSync(out));
    assert.deepEqual(readdirSync(TMP).filter((f) => f.startsWith('.killed.')).map((f) => f.replace(/-\d+-[0-9a-f]+$/, '')).sort(), ['.killed.lock', '.killed.old', '.killed.tmp']);

    const again = await llmctl(['pretrain', '--config', cfg, '--backend', 'wasm']);
    assert.equal(again.code, 2, explain(again));
    assert.match(plain(again)[0]!, /^llmctl pretrain: .*killed: already holds a checkpoint \(stage pretrain, step 4, saved .*\); pass --overwrite to replace it or --resume to continue it$/);

    const resumed = await llmctl(['pretrain', '--config', cfg, '--backend', 'wasm', '--resume', '--json']);
    assert.equal(resumed.code, 0, explain(resumed));
    assert.equal((JSON.parse(resumed.stdout) as { steps: number }).steps, 6);
    assert.deepEqual(readdirSync(TMP).filter((f) => f.startsWith('.killed.')), [], 'leftovers and the stale lock are gone');
    const steps = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss?: number }).filter((l) => 'loss' in l).map((l) => l.step);
    assert.deepEqual(steps, [1, 2, 3, 4, 5, 6], 'each step logged once');
    assert.equal(readTrainerState(out).step, 6);
    const a = loadCheckpoint(straight), b = loadCheckpoint(out);
    let diff = 0;
    for (const [k, t] of Object.entries(a.params)) {
      const x = t.dataSync(), y = b.params[k]!.dataSync();
      for (let i = 0; i < x.length; i++) diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
    }
    assert.ok(diff < 1e-6, `weights differ by ${diff}`);
    disposeParams(a.params);
    disposeParams(b.params);
  });
});

describe('commands and flags', () => {
  const model = join(TMP, 'stories');
  const imported = (async () => {
    const cfg = join(TMP, 'import.yaml');
    writeFileSync(cfg, `model: ${STORIES_BIN}\ntokenizer: ${TOK512_PATH}\nout: ${join(TMP, 'not-here')}\n`);
    return llmctl(['import', '--config', cfg, '--set', `out=${model}`, '--backend', 'wasm', '--json']);
  })();

  test('import reads --config and --set; the backend is named once at info level, the fallbacks once at debug', async () => {
    const r = await imported;
    assert.equal(r.code, 0, explain(r));
    assert.equal((JSON.parse(r.stdout) as { out: string }).out, model);
    assert.ok(existsSync(join(model, 'model.safetensors')) && !existsSync(join(TMP, 'not-here')));
    const backendLines = logLines(r).filter((l) => /backend/.test(l.msg));
    assert.deepEqual(backendLines.map((l) => [l.level, l.msg]), [[30, 'using tfjs backend: wasm']]);
    const debug = await llmctl(['generate', '--checkpoint', model, '-n', '1', '--backend', 'auto', '--log-level', 'debug']);
    assert.equal(debug.code, 0, explain(debug));
    const lines = logLines(debug).filter((l) => /backend/.test(l.msg));
    assert.equal(lines.filter((l) => l.level === 30).length, 1, JSON.stringify(lines));
    assert.ok(lines.filter((l) => l.level === 20).length <= 1, JSON.stringify(lines));
  });

  test('--stop "\\n" from a shell stops at the first newline', async () => {
    await imported;
    const r = await llmctl(['generate', '--checkpoint', model, '--prompt', 'Once upon a time', '-t', '0', '-n', '200', '--stop', '\\n', '--json', '--backend', 'wasm']);
    assert.equal(r.code, 0, explain(r));
    const g = JSON.parse(r.stdout) as { text: string; finish_reason: string; completion_tokens: number };
    assert.equal(g.finish_reason, 'stop', JSON.stringify(g));
    assert.ok(!g.text.includes('\n') && g.completion_tokens < 200, JSON.stringify(g));
  });

  test('bad flag values blame the flag; a missing --checkpoint or --config says so', async () => {
    const cases: [string[], string][] = [
      [['generate', '--checkpoint', model, '--top-p', '1.5'], 'llmctl generate: --top-p 1.5: sampling.top_p: must be <= 1'],
      [['generate', '--checkpoint', model, '-n', 'abc'], 'llmctl generate: --max-tokens: expected a number'],
      [['generate', '--prompt', 'hi'], 'llmctl generate: --checkpoint is required (or checkpoint: in a --config file)'],
      [['sft'], 'llmctl sft: --config is required: this command reads its settings from a YAML/JSON file (e.g. --config configs/sft.yaml); without one, base is missing'],
    ];
    const runs = await Promise.all(cases.map(([args]) => llmctl([...args, '--backend', 'wasm'])));
    runs.forEach((r, i) => {
      assert.equal(r.code, 2, explain(r));
      assert.equal(r.stderr, `${cases[i]![1]}\n`);
    });
  });

  test('every flag of every command has a description, and every command an example', async () => {
    for (const entry of COMMANDS) {
      const y = globalOptions(yargs([])).scriptName('llmctl');
      const cmd = await entry.load();
      if (typeof cmd.builder === 'function') await cmd.builder(y as never);
      const help = await y.getHelp();
      const options = help.split('\n').filter((l) => /^\s+-/.test(l));
      assert.ok(options.length >= 7, `${entry.name}: ${help}`);
      for (const line of options) {
        const described = line.replace(/^\s+(-\w, )?--[\w-]+\s*/, '').replace(/\[[^\]]*\]/g, '').trim();
        assert.ok(described.length > 3, `${entry.name}: no description for ${line.trim()}`);
      }
      assert.match(help, /Examples:\n\s+llmctl \w+/, `${entry.name} has an example`);
    }
  });

  test('the progress line is used only on a terminal of known, non-zero width', () => {
    assert.equal(canShowProgressLine({ isTTY: true, columns: 80 }), true);
    assert.equal(canShowProgressLine({ isTTY: true, columns: 0 }), false);
    assert.equal(canShowProgressLine({ isTTY: true }), false);
    assert.equal(canShowProgressLine({ isTTY: false, columns: 80 }), false);
  });

  test('README: every command it shows exists, and its first paragraph promises only stages that exist', () => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    const names = new Set(COMMANDS.map((c) => c.name));
    for (const m of readme.matchAll(/`llmctl (\w+)/g)) assert.ok(names.has(m[1]!), `README shows llmctl ${m[1]}, which is not a command`);
    const first = readme.split('\n\n')[1]!;
    const stages: Record<string, string[]> = { align: ['dpo', 'ppo', 'rm'], evaluate: ['eval'], quantize: ['quantize'], serve: ['serve'] };
    for (const [word, commands] of Object.entries(stages)) {
      if (new RegExp(`\\b${word}\\b`).test(first) && !/\b(planned|not yet|coming)\b/.test(first)) {
        assert.ok(commands.some((c) => names.has(c)), `the first paragraph says "${word}" but no ${commands.join('/')} command exists`);
      }
    }
  });
});
