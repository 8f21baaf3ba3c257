import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { ConfigError, loadConfig, parseSetOverride } from '../src/config/load.js';
import { ModelConfigSchema, OptimSchema, TrainLoopSchema } from '../src/config/schemas.js';
import { PretrainConfigSchema } from '../src/config/stages.js';

/** A stage-like schema built from the shared pieces. */
const StageSchema = z.strictObject({
  name: z.string().default('run'),
  data: z.strictObject({ train: z.string(), tags: z.array(z.string()).default([]) }),
  model: ModelConfigSchema,
  optim: OptimSchema.prefault({}), // optional section: parse {} through the schema when absent
  train: TrainLoopSchema,
});

let dir: string;
let prevCwd: string;
before(() => {
  // Work with relative paths, as the CLI does, so messages look like "configs/x.yaml: ...".
  prevCwd = process.cwd();
  dir = mkdtempSync(join(tmpdir(), 'llmctl-config-test-'));
  process.chdir(dir);
});
after(() => {
  process.chdir(prevCwd);
  rmSync(dir, { recursive: true, force: true });
});

const GOOD_YAML = `# a small model
data:
  train: data/train.bin
model:
  vocab_size: 256
  n_ctx: 64
  n_layer: 2
  n_embd: 32
  n_head: 4
optim:
  lr: 1e-3
train:
  max_steps: 10
  batch_size: 4
`;

function write(name: string, text: string): string {
  writeFileSync(join(dir, name), text);
  return name;
}

/** Assert that fn throws a ConfigError with exactly this message. */
function throwsConfig(fn: () => unknown, message: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    assert.equal(e.message, message);
    return true;
  });
}

describe('loadConfig', () => {
  test('loads YAML and applies defaults and derived defaults', () => {
    const c = loadConfig(StageSchema, write('good.yaml', GOOD_YAML));
    assert.equal(c.name, 'run');
    assert.equal(c.data.train, 'data/train.bin', 'paths are left as written (relative to cwd)');
    assert.deepEqual(c.model, {
      arch: 'gpt2', vocab_size: 256, n_ctx: 64, n_layer: 2, n_embd: 32, n_head: 4, n_kv_head: 4,
      norm_eps: 1e-5, rope_theta: 10000, tie_embeddings: true, dropout: 0, bias: true,
    });
    assert.equal(c.optim.lr, 1e-3, 'YAML 1.2: 1e-3 is a number');
    assert.equal(c.optim.min_lr, 1e-4, 'min_lr defaults to lr / 10');
    assert.equal(c.optim.schedule, 'cosine');
    assert.deepEqual(c.train, {
      max_steps: 10, batch_size: 4, grad_accum: 1, eval_every: 100, eval_batches: 8, save_every: 500, log_every: 10, seed: 1337, workers: 1,
    });
  });

  test('loads JSON', () => {
    const file = write('good.json', JSON.stringify({
      data: { train: 'x' },
      model: { arch: 'llama', vocab_size: 8, n_ctx: 8, n_layer: 1, n_embd: 8, n_head: 4, n_kv_head: 2 },
      train: { max_steps: 1, batch_size: 1 },
    }));
    const c = loadConfig(StageSchema, file);
    assert.equal(c.model.arch, 'llama');
    assert.equal(c.model.n_kv_head, 2);
    assert.equal(c.model.bias, false, 'llama defaults to no bias');
    assert.equal(c.optim.lr, 3e-4);
  });

  test('--set overrides nested fields, creates intermediate objects, and types values', () => {
    const c = loadConfig(StageSchema, write('set.yaml', GOOD_YAML), [
      'optim.lr=3e-4',
      'optim.min_lr=0',
      'train.batch_size=16',
      'model.tie_embeddings=false',
      'data.tags=[web, books]',
      'name=007x',
    ]);
    assert.equal(c.optim.lr, 3e-4);
    assert.equal(c.optim.min_lr, 0);
    assert.equal(c.train.batch_size, 16);
    assert.equal(c.model.tie_embeddings, false);
    assert.deepEqual(c.data.tags, ['web', 'books']);
    assert.equal(c.name, '007x');

    // No file at all: everything from --set and `extra`; later sources win (file < extra < --set).
    const d = loadConfig(
      z.strictObject({ a: z.strictObject({ b: z.strictObject({ c: z.number() }) }), n: z.number(), s: z.string().optional() }),
      undefined,
      ['a.b.c=2'],
      { n: 5, 'a.b.c': 1, s: undefined },
    );
    assert.deepEqual(d, { a: { b: { c: 2 } }, n: 5 });
  });

  test('parseSetOverride', () => {
    assert.deepEqual(parseSetOverride('train.lr=3e-4'), [['train', 'lr'], 0.0003]);
    assert.deepEqual(parseSetOverride('a=true'), [['a'], true]);
    assert.deepEqual(parseSetOverride('a=null'), [['a'], null]);
    assert.deepEqual(parseSetOverride('a=[1, x]'), [['a'], [1, 'x']]);
    assert.deepEqual(parseSetOverride('a=data/*.txt'), [['a'], 'data/*.txt']);
    assert.deepEqual(parseSetOverride('a=x=y'), [['a'], 'x=y']);
    assert.deepEqual(parseSetOverride('a='), [['a'], '']);
    assert.deepEqual(parseSetOverride('a=*bad'), [['a'], '*bad'], 'unparseable YAML stays a string');
    throwsConfig(() => parseSetOverride('train.lr'), '--set train.lr: expected key=value, e.g. train.lr=3e-4');
    throwsConfig(() => parseSetOverride('train..lr=1'), '--set train..lr=1: empty segment in key "train..lr"');
  });

  describe('error messages are one exact line', () => {
    test('wrong type', () => {
      const f = write('pretrain.yaml', GOOD_YAML.replace('lr: 1e-3', 'lr: fast'));
      throwsConfig(() => loadConfig(StageSchema, f), 'pretrain.yaml: optim.lr: expected number, received string');
    });

    test('wrong type via --set', () => {
      throwsConfig(
        () => loadConfig(StageSchema, write('p.yaml', GOOD_YAML), ['train.max_steps=ten']),
        '--set train.max_steps=ten: train.max_steps: expected number, received string',
      );
      throwsConfig(
        () => loadConfig(StageSchema, write('p.yaml', GOOD_YAML), ['train.max_steps=1.5']),
        '--set train.max_steps=1.5: train.max_steps: expected integer, received 1.5',
      );
      throwsConfig(
        () => loadConfig(StageSchema, write('p.yaml', GOOD_YAML), ['data.train.x=1']),
        '--set data.train.x=1: data.train: cannot set a field inside a string',
      );
    });

    test('unknown key', () => {
      const f = write('typo.yaml', GOOD_YAML.replace('  lr: 1e-3', '  lrr: 1e-3'));
      throwsConfig(() => loadConfig(StageSchema, f), 'typo.yaml: optim.lrr: unknown key');
      throwsConfig(() => loadConfig(StageSchema, write('top.yaml', GOOD_YAML + 'extra: 1\n')), 'top.yaml: extra: unknown key');
    });

    test('bad YAML syntax reports the line', () => {
      const f = write('bad.yaml', 'model:\n  n_layer: 2\n  n_embd: 32: 4\n');
      throwsConfig(() => loadConfig(StageSchema, f), 'bad.yaml: line 3: Nested mappings are not allowed in compact mappings');
      throwsConfig(
        () => loadConfig(StageSchema, write('tab.yml', 'a: 1\nb:\n\tc: 1\n')),
        'tab.yml: line 3: Tabs are not allowed as indentation',
      );
      throwsConfig(
        () => loadConfig(StageSchema, write('dup.yaml', 'a: 1\na: 2\n')),
        'dup.yaml: line 2: Map keys must be unique',
      );
    });

    test('bad JSON syntax reports the line', () => {
      throwsConfig(
        () => loadConfig(StageSchema, write('bad.json', '{\n  "a": 1,\n}\n')),
        'bad.json: line 3: Expected double-quoted property name',
      );
    });

    test('top level must be a mapping', () => {
      throwsConfig(() => loadConfig(StageSchema, write('list.yaml', '- 1\n')), 'list.yaml: top level must be a mapping of keys to values, got list');
    });

    test('missing file', () => {
      throwsConfig(
        () => loadConfig(StageSchema, 'configs/nope.yaml'),
        "configs/nope.yaml: cannot read: ENOENT: no such file or directory, open 'configs/nope.yaml'",
      );
    });

    test('missing required field', () => {
      throwsConfig(
        () => loadConfig(StageSchema, write('p.yaml', GOOD_YAML.replace('  batch_size: 4\n', ''))),
        'p.yaml: train.batch_size: missing required value (expected number)',
      );
    });

    test('n_embd not divisible by n_head', () => {
      const f = write('div.yaml', GOOD_YAML.replace('n_embd: 32', 'n_embd: 30'));
      throwsConfig(() => loadConfig(StageSchema, f), 'div.yaml: model.n_embd: must be divisible by n_head (n_embd=30, n_head=4)');
    });

    test('n_head not divisible by n_kv_head', () => {
      const f = write('kv.yaml', GOOD_YAML);
      throwsConfig(() => loadConfig(StageSchema, f, ['model.n_kv_head=3']), '--set model.n_kv_head=3: model.n_kv_head: must divide n_head (n_head=4, n_kv_head=3)');
    });

    test('enum and range errors', () => {
      const f = write('r.yaml', GOOD_YAML);
      throwsConfig(() => loadConfig(StageSchema, f, ['model.arch=gpt3']), '--set model.arch=gpt3: model.arch: expected one of "gpt2" | "llama", received "gpt3"');
      throwsConfig(() => loadConfig(StageSchema, f, ['model.dropout=1']), '--set model.dropout=1: model.dropout: must be < 1');
      throwsConfig(() => loadConfig(StageSchema, f, ['train.max_steps=0']), '--set train.max_steps=0: train.max_steps: must be > 0');
      throwsConfig(() => loadConfig(StageSchema, f, ['optim.min_lr=1']), '--set optim.min_lr=1: optim.min_lr: must be <= lr (min_lr=1, lr=0.001)');
    });
  });
});

describe('typos', () => {
  test('a misspelt key is reported as the unknown key, naming the key it most likely meant', () => {
    const dir = mkdtempSync(join(tmpdir(), 'llmctl-typo-'));
    const f = join(dir, 'typo.yaml');
    writeFileSync(f, 'data: {dir: d}\nmodel: {vocab_size: 8, n_ctx: 4, n_layer: 1, n_embd: 4, n_head: 1}\ntrain: {max_steps: 3, bacth_size: 4}\nout_dir: o\n');
    assert.throws(() => loadConfig(PretrainConfigSchema, f), (e: Error) => e.message === `${f}: train.bacth_size: unknown key (did you mean batch_size?)`);
  });
});
