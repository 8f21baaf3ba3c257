import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bf16ToF32,
  decodeSafetensors,
  encodeSafetensors,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromFloat32,
  readSafetensors,
  toFloat32,
  writeSafetensors,
  type TensorData,
} from '../src/checkpoint/safetensors.js';
import { cleanStaleTemps, fileDigest, hashDir, sha256File, writeDirAtomic } from '../src/checkpoint/dir.js';
import {
  createManifest,
  readJson,
  readManifest,
  readTrainerState,
  verifyManifestFiles,
  writeJson,
  writeManifest,
  writeTrainerState,
  type TrainerState,
} from '../src/checkpoint/manifest.js';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'llmctl-ckpt-test-'));
}

/** Build a safetensors file from a header object and raw data bytes, exactly as given (no padding). */
function rawFile(header: unknown, data: number[] = []): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.from(data)]);
}

describe('safetensors', () => {
  const all: Record<string, TensorData> = {
    f32: { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, -0.25, 1e30]) },
    f16: { dtype: 'F16', shape: [2], data: new Uint16Array([0x3c00, 0xc000]) },
    bf16: { dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0xc000]) },
    f64: { dtype: 'F64', shape: [1], data: new Float64Array([Math.PI]) },
    i8: { dtype: 'I8', shape: [3], data: new Int8Array([-128, 0, 127]) },
    u8: { dtype: 'U8', shape: [3], data: new Uint8Array([0, 1, 255]) },
    i16: { dtype: 'I16', shape: [2], data: new Int16Array([-32768, 32767]) },
    u16: { dtype: 'U16', shape: [1], data: new Uint16Array([65535]) },
    i32: { dtype: 'I32', shape: [3, 1], data: new Int32Array([-5, 0, 2 ** 31 - 1]) },
    u32: { dtype: 'U32', shape: [1], data: new Uint32Array([2 ** 32 - 1]) },
    i64: { dtype: 'I64', shape: [2], data: new BigInt64Array([-(2n ** 63n), 2n ** 53n + 1n]) },
    bool: { dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
    empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    scalar: { dtype: 'F32', shape: [], data: new Float32Array([42]) },
  };

  test('round-trips every dtype, empty tensors and 0-d scalars, with metadata', () => {
    const buf = encodeSafetensors(all, { format: 'pt', note: 'hi' });
    const { tensors, metadata } = decodeSafetensors(buf);
    assert.deepEqual(metadata, { format: 'pt', note: 'hi' });
    assert.deepEqual(Object.keys(tensors).sort(), Object.keys(all).sort());
    for (const [name, t] of Object.entries(all)) {
      const got = tensors[name]!;
      assert.equal(got.dtype, t.dtype, name);
      assert.deepEqual(got.shape, t.shape, name);
      assert.equal(got.data.constructor, t.data.constructor, name);
      assert.deepEqual(Array.from(got.data as ArrayLike<number | bigint>), Array.from(t.data as ArrayLike<number | bigint>), name);
    }
  });

  test('header is space-padded to 8 bytes and tensors are laid out in sorted-name order', () => {
    const buf = encodeSafetensors({
      b: { dtype: 'U8', shape: [1], data: new Uint8Array([2]) },
      a: { dtype: 'U8', shape: [3], data: new Uint8Array([1, 1, 1]) },
    });
    const n = Number(buf.readBigUInt64LE(0));
    assert.equal(n % 8, 0);
    const headerText = buf.subarray(8, 8 + n).toString('utf8');
    assert.match(headerText, / *$/);
    const header = JSON.parse(headerText);
    assert.deepEqual(header.a.data_offsets, [0, 3]);
    assert.deepEqual(header.b.data_offsets, [3, 4]);
    assert.equal(header.__metadata__, undefined, 'no metadata key when none given');
    assert.deepEqual([...buf.subarray(8 + n)], [1, 1, 1, 2]);
  });

  test('decodes a hand-built file (pins the on-disk format)', () => {
    // 54 bytes of JSON + 2 spaces of padding = 56, a multiple of 8.
    const header = '{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  ';
    assert.equal(header.length, 56);
    const bytes = [
      56, 0, 0, 0, 0, 0, 0, 0, // u64 LE header length
      ...Buffer.from(header, 'ascii'),
      0x00, 0x00, 0x80, 0x3f, // 1.0f LE
      0x00, 0x00, 0x00, 0xc0, // -2.0f LE
    ];
    const { tensors, metadata } = decodeSafetensors(Uint8Array.from(bytes));
    assert.deepEqual(metadata, {});
    assert.equal(tensors.x!.dtype, 'F32');
    assert.deepEqual(tensors.x!.shape, [2]);
    assert.deepEqual(Array.from(tensors.x!.data as Float32Array), [1, -2]);
    // ...and our encoder produces exactly those bytes.
    assert.deepEqual([...encodeSafetensors({ x: { dtype: 'F32', shape: [2], data: new Float32Array([1, -2]) } })], bytes);
  });

  test('misaligned input buffers are copied, not mis-read', () => {
    const file = encodeSafetensors({ x: { dtype: 'F32', shape: [2], data: new Float32Array([1, -2]) } });
    const shifted = new Uint8Array(file.length + 1);
    shifted.set(file, 1);
    const t = decodeSafetensors(shifted.subarray(1)).tensors.x!;
    assert.deepEqual(Array.from(t.data as Float32Array), [1, -2]);
  });

  test('reads and writes files', () => {
    const dir = tempDir();
    try {
      const path = join(dir, 'm.safetensors');
      writeSafetensors(path, { w: all.f32! }, { step: '3' });
      const { tensors, metadata } = readSafetensors(path);
      assert.deepEqual(Array.from(tensors.w!.data as Float32Array), Array.from(all.f32!.data as Float32Array));
      assert.deepEqual(metadata, { step: '3' });
      assert.throws(() => readSafetensors(join(dir, 'nope.safetensors')), /nope\.safetensors: cannot read: ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('rejects corrupt input with a specific error', () => {
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ['truncated', Uint8Array.from([1, 2, 3]), /^f\.st: invalid safetensors file: truncated file \(3 bytes/],
      [
        'header length beyond file',
        (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(1000n); return b; })(),
        /^f\.st: invalid safetensors file: header length 1000 goes beyond the end of the file \(16 bytes\)$/,
      ],
      ['header not JSON', rawFile('x').fill(0x7b, 8), /header is not valid JSON/],
      ['header not object', rawFile([1]), /header must be a JSON object/],
      [
        'unknown dtype',
        rawFile({ x: { dtype: 'F8', shape: [1], data_offsets: [0, 1] } }, [0]),
        /^f\.st: invalid safetensors file: tensor "x": unknown dtype "F8"$/,
      ],
      [
        'shape x dtype size mismatch',
        rawFile({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, [0, 0, 0, 0, 0, 0, 0, 0]),
        /tensor "x": shape \[3\] x F32 needs 12 bytes but data_offsets span 8$/,
      ],
      [
        'offsets out of range',
        rawFile({ x: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, [1, 2]),
        /tensor "x": data_offsets \[0, 4\] are out of range \(byte buffer is 2 bytes\)$/,
      ],
      [
        'overlapping tensors',
        rawFile({ a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [2], data_offsets: [1, 3] } }, [1, 2, 3]),
        /tensor "b": data_offsets \[1, 3\] overlap tensor "a"$/,
      ],
      [
        'gap between tensors',
        rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [1, 2] } }, [0, 1]),
        /tensor "a": gap of 1 unused bytes before its data$/,
      ],
      ['trailing bytes', rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, [1, 2]), /1 trailing bytes after the last tensor$/],
      [
        'bad offsets',
        rawFile({ a: { dtype: 'U8', shape: [1], data_offsets: [2, 1] } }, [1]),
        /tensor "a": data_offsets must be \[begin, end\] with 0 <= begin <= end, got \[2,1\]$/,
      ],
      ['bad shape', rawFile({ a: { dtype: 'U8', shape: [-1], data_offsets: [0, 0] } }), /tensor "a": shape must be a list of non-negative integers/],
      ['non-string metadata', rawFile({ __metadata__: { step: 3 } }), /__metadata__\.step must be a string, got number/],
    ];
    for (const [name, buf, re] of cases) {
      // Match on .message (assert.throws with a RegExp would match "Error: ..." instead).
      test(name, () => assert.throws(() => decodeSafetensors(buf, 'f.st'), (e: Error) => re.test(e.message) || assert.fail(e.message)));
    }
  });

  test('encoder rejects inconsistent tensors', () => {
    assert.throws(
      () => encodeSafetensors({ x: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }),
      /tensor "x": shape \[3\] has 3 elements but data has 2/,
    );
    assert.throws(
      () => encodeSafetensors({ x: { dtype: 'F32', shape: [2], data: new Int32Array(2) } }),
      /tensor "x": dtype F32 needs a Float32Array, got Int32Array/,
    );
  });

  test('half-precision conversions', () => {
    assert.equal(f16ToF32(0x3c00), 1);
    assert.equal(f16ToF32(0xc000), -2);
    assert.equal(f16ToF32(0x7bff), 65504);
    assert.equal(f16ToF32(0x0001), 2 ** -24);
    assert.equal(f16ToF32(0x7c00), Infinity);
    assert.ok(Number.isNaN(f16ToF32(0x7e00)));
    assert.ok(Object.is(f16ToF32(0x8000), -0));
    assert.equal(bf16ToF32(0x3f80), 1);
    assert.equal(bf16ToF32(0xc000), -2);
    // Encoding: exact values, rounding to nearest even, overflow, subnormals.
    assert.equal(f32ToF16(1), 0x3c00);
    assert.equal(f32ToF16(65504), 0x7bff);
    assert.equal(f32ToF16(1e6), 0x7c00);
    assert.equal(f32ToF16(2 ** -24), 0x0001);
    assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // tie → even
    assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // tie → even (up)
    assert.equal(f32ToBf16(1), 0x3f80);
    assert.equal(f32ToBf16(-2), 0xc000);
    // Every finite half round-trips through f32.
    for (let bits = 0; bits < 0x10000; bits++) {
      const v = f16ToF32(bits);
      if (Number.isFinite(v)) assert.equal(f32ToF16(v), bits, `half 0x${bits.toString(16)}`);
    }
    const vals = new Float32Array([0.5, -3, 1024]);
    for (const dtype of ['F32', 'F16', 'BF16', 'F64'] as const) {
      assert.deepEqual(Array.from(toFloat32(fromFloat32(vals, [3], dtype))), [0.5, -3, 1024], dtype);
    }
    assert.throws(() => toFloat32(all.i32!), /dtype I32 is not a float dtype/);
  });
});

describe('checkpoint directories', () => {
  test('writeDirAtomic creates, then replaces a directory; no temp dirs are left', async () => {
    const root = tempDir();
    try {
      const final = join(root, 'ckpt');
      await writeDirAtomic(final, (tmp) => writeFileSync(join(tmp, 'a.txt'), 'v1'));
      assert.equal(readFileSync(join(final, 'a.txt'), 'utf8'), 'v1');

      await writeDirAtomic(final, async (tmp) => {
        writeFileSync(join(tmp, 'b.txt'), 'v2');
      });
      assert.deepEqual(readdirSync(final), ['b.txt'], 'old contents are gone, not merged');
      assert.deepEqual(readdirSync(root), ['ckpt']);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('a throwing fill leaves the previous directory untouched and no temp dir behind', async () => {
    const root = tempDir();
    try {
      const final = join(root, 'ckpt');
      await writeDirAtomic(final, (tmp) => writeFileSync(join(tmp, 'a.txt'), 'v1'));
      await assert.rejects(
        writeDirAtomic(final, (tmp) => {
          writeFileSync(join(tmp, 'a.txt'), 'half-written');
          throw new Error('disk full');
        }),
        /disk full/,
      );
      assert.equal(readFileSync(join(final, 'a.txt'), 'utf8'), 'v1');
      assert.deepEqual(readdirSync(root), ['ckpt']);

      // Also when there was no previous directory.
      await assert.rejects(writeDirAtomic(join(root, 'fresh'), () => Promise.reject(new Error('boom'))), /boom/);
      assert.deepEqual(readdirSync(root), ['ckpt']);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('cleanStaleTemps removes dead temp dirs and restores an orphaned old dir', async () => {
    const root = tempDir();
    try {
      const deadPid = 2 ** 22 + 12345; // above Linux pid_max default range, so not alive
      mkdirSync(join(root, `.a.tmp-${deadPid}-abcd`));
      mkdirSync(join(root, `.b.old-${deadPid}-abcd`)); // crash between renames: b is missing
      writeFileSync(join(root, `.b.old-${deadPid}-abcd`, 'w'), 'x');
      mkdirSync(join(root, `.c.tmp-${process.pid}-abcd`)); // ours: in progress, keep
      const touched = await cleanStaleTemps(root);
      assert.equal(touched.length, 2);
      assert.deepEqual(readdirSync(root).sort(), [`.c.tmp-${process.pid}-abcd`, 'b']);
      assert.equal(readFileSync(join(root, 'b', 'w'), 'utf8'), 'x');
      assert.deepEqual(await cleanStaleTemps(join(root, 'missing')), []);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('sha256File / hashDir', async () => {
    const root = tempDir();
    try {
      writeFileSync(join(root, 'abc'), 'abc');
      writeFileSync(join(root, 'empty'), '');
      const abc = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
      assert.equal(await sha256File(join(root, 'abc')), abc);
      assert.deepEqual(await fileDigest(join(root, 'abc')), { sha256: abc, bytes: 3 });
      assert.deepEqual(await hashDir(root, ['empty', 'abc']), {
        abc: { sha256: abc, bytes: 3 },
        empty: { sha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', bytes: 0 },
      });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('manifest and trainer state', () => {
  const state: TrainerState = {
    step: 500,
    tokens_seen: 1_024_000,
    rng_state: [1, 2, 3],
    data_cursor: { shard: 2, offset: 4096 },
    lr: 2.5e-4,
    schedule: { kind: 'cosine', peak_lr: 3e-4, min_lr: 3e-5, warmup_steps: 100, total_steps: 5000 },
  };

  test('full checkpoint: write atomically, read back, verify hashes', async () => {
    const root = tempDir();
    try {
      const dir = join(root, 'step-500');
      await writeDirAtomic(dir, async (tmp) => {
        writeSafetensors(join(tmp, 'model.safetensors'), { w: { dtype: 'F32', shape: [1], data: new Float32Array([1]) } });
        writeTrainerState(tmp, state);
        const manifest = await createManifest(
          tmp,
          {
            stage: 'pretrain',
            parent: null,
            config: { model: { n_layer: 2 } },
            metrics: { loss: 3.2 },
            versions: { llmctl: '0.1.0', node: process.version, tfjs: '4.22.0', backend: 'cpu' },
          },
          ['model.safetensors', 'trainer_state.json'],
        );
        writeManifest(tmp, manifest);
      });
      const m = readManifest(dir);
      assert.equal(m.stage, 'pretrain');
      assert.equal(m.format_version, 1);
      assert.deepEqual(Object.keys(m.files), ['model.safetensors', 'trainer_state.json']);
      await verifyManifestFiles(dir, m);
      assert.deepEqual(readTrainerState(dir), state);

      writeFileSync(join(dir, 'model.safetensors'), 'tampered');
      await assert.rejects(verifyManifestFiles(dir, m), /model\.safetensors: does not match manifest\.json \(expected \d+ bytes/);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('clear errors for missing or invalid files', () => {
    const dir = tempDir();
    try {
      const mpath = join(dir, 'manifest.json');
      assert.throws(() => readManifest(dir), (e: Error) => e.message.startsWith(`${mpath}: cannot read checkpoint manifest: ENOENT`));
      writeFileSync(mpath, '{"format": ');
      assert.throws(() => readManifest(dir), (e: Error) => e.message.startsWith(`${mpath}: checkpoint manifest is not valid JSON:`));
      writeJson(mpath, { format: 'other' });
      assert.throws(() => readManifest(dir), {
        message: `${mpath}: not an llmctl checkpoint manifest (format is "other", expected "llmctl-checkpoint")`,
      });
      writeJson(mpath, { format: 'llmctl-checkpoint', format_version: 2 });
      assert.throws(() => readManifest(dir), { message: `${mpath}: unsupported format_version 2 (this llmctl reads 1)` });
      writeJson(mpath, { format: 'llmctl-checkpoint', format_version: 1, stage: 'pretrain' });
      assert.throws(() => readManifest(dir), { message: `${mpath}: invalid checkpoint manifest: created_at: missing required value (expected string)` });

      writeJson(join(dir, 'trainer_state.json'), { ...state, step: -1 });
      assert.throws(() => readTrainerState(dir), { message: `${join(dir, 'trainer_state.json')}: invalid trainer state: step: must be >= 0` });
      assert.equal(existsSync(join(dir, 'x.json')), false);
      assert.throws(() => readJson(join(dir, 'x.json'), 'thing'), /x\.json: cannot read thing: ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
