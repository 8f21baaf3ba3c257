/**
 * GGUF (src/quant/gguf.ts, gguf-model.ts) without llama.cpp: Q8_0 / Q4_0 blocks against hand-computed
 * bytes, the file layout (magic, version, typed metadata, dims innermost first, 32-byte aligned data),
 * the RoPE row permutation and its inverse, stories260K exported and read back by our reader equal to the
 * source (exactly for f32, to the block codec for q8_0 / q4_0), `import --format gguf` giving the same
 * logits, and errors that name the file.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/backend/index.js';
import { disposeParams } from '../src/checkpoint/model.js';
import { f16ToF32, f32ToF16 } from '../src/checkpoint/safetensors.js';
import { type Params, forward, resolveModelConfig } from '../src/model/gpt.js';
import { initParams } from '../src/model/init.js';
import { importLlama2c } from '../src/model/llama2c.js';
import { fromGguf, fromInterleaved, toGguf, toInterleaved } from '../src/quant/gguf-model.js';
import { decodeGguf, decodeTensor, dequantizeQ4_0, dequantizeQ8_0, encodeGguf, quantizeQ4_0, quantizeQ8_0, readGguf, str, u32, writeGguf } from '../src/quant/gguf.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import { STORIES_BIN, TOK512_PATH } from './paths.js';

await initBackend('wasm');

const TMP = mkdtempSync(join(tmpdir(), 'llmctl-gguf-test-'));
after(() => rmSync(TMP, { recursive: true, force: true }));

const h = (x: number) => f16ToF32(f32ToF16(x));

describe('block codecs', () => {
  test('Q8_0: d = absmax/127 as f16, q = roundf(x/d) (halves away from zero)', () => {
    const x = new Float32Array(32);
    x.set([1, -2, 0.5, 2 / 127 * 2.5]);
    const b = quantizeQ8_0(x);
    assert.equal(b.length, 34);
    assert.equal(new DataView(b.buffer).getUint16(0, true), f32ToF16(2 / 127));
    assert.deepEqual(Array.from(new Int8Array(b.buffer, 2, 4)), [64, -127, 32, 3]); // 63.5 → 64, 31.75 → 32, 2.5 → 3
    const d = dequantizeQ8_0(b, 32);
    assert.equal(d[1], -127 * h(2 / 127));
  });

  test('Q4_0: d = (value of largest magnitude)/−8, q = min(15, trunc(x/d + 8.5)), q[j] low and q[j+16] high nibble', () => {
    const x = new Float32Array(32);
    x[0] = -4; // d = 0.5, 1/d = 2
    x[1] = 3.9; // 7.8 + 8.5 → 16 → 15
    x[16] = 1; // 2 + 8.5 → 10
    x[17] = -1.3; // -2.6 + 8.5 = 5.9 → 5
    const b = quantizeQ4_0(x);
    assert.equal(b.length, 18);
    assert.equal(h(f16ToF32(new DataView(b.buffer).getUint16(0, true))), 0.5);
    assert.equal(b[2], 0 | (10 << 4));
    assert.equal(b[3], 15 | (5 << 4));
    assert.equal(b[4], 8 | (8 << 4)); // zeros
    const d = dequantizeQ4_0(b, 32);
    assert.deepEqual([d[0], d[1], d[16], d[17], d[2]], [-4, 3.5, 1, -1.5, 0]);
  });
});

describe('file layout', () => {
  test('header, typed metadata, dims innermost first, aligned data; decode(encode(f)) = f', () => {
    const data = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
    const file = {
      metadata: { 'general.architecture': str('llama'), 'llama.block_count': u32(2), 'x.list': { type: 'array' as const, itemType: 'string' as const, value: ['a', '▁b'] } },
      tensors: [{ name: 'w', dims: [3, 2], type: 'F32' as const, data }, { name: 'v', dims: [2], type: 'F32' as const, data: data.subarray(0, 8) }],
    };
    const buf = encodeGguf(file);
    assert.equal(buf.readUInt32LE(0), 0x46554747);
    assert.equal(buf.toString('latin1', 0, 4), 'GGUF');
    assert.equal(buf.readUInt32LE(4), 3);
    assert.equal(buf.readBigUInt64LE(8), 2n);
    assert.equal(buf.readBigUInt64LE(16), 3n);
    const back = decodeGguf(buf);
    assert.deepEqual(back.metadata, file.metadata);
    assert.deepEqual(back.tensors.map((t) => [t.name, t.dims, t.type]), [['w', [3, 2], 'F32'], ['v', [2], 'F32']]);
    assert.deepEqual(Array.from(decodeTensor(back.tensors[0]!)), [1, 2, 3, 4, 5, 6]);
    assert.equal((back.tensors[1]!.data.byteOffset - back.tensors[0]!.data.byteOffset) % 32, 0);
    assert.equal((back.tensors[0]!.data.byteOffset - buf.byteOffset) % 32, 0);
  });

  test('truncated or foreign files: one error naming the file', () => {
    const path = join(TMP, 'bad.gguf');
    writeFileSync(path, Buffer.from('GGML not a gguf file at all.....'));
    assert.throws(() => readGguf(path), new RegExp(`^Error: ${path}: invalid GGUF file: no "GGUF" magic$`));
    const good = encodeGguf({ metadata: { a: u32(1) }, tensors: [{ name: 'w', dims: [8], type: 'F32', data: new Uint8Array(32) }] });
    writeFileSync(path, good.subarray(0, good.length - 8));
    assert.throws(() => readGguf(path), /bad\.gguf: invalid GGUF file: tensor w: data \[\d+, \d+\) past the end of the file/);
  });
});

describe('models', () => {
  test('RoPE rows: rotate-half [x0 x1 y0 y1] ↔ interleaved [x0 y0 x1 y1] per head', () => {
    const rows = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]); // 2 heads of 4 rows, width 1
    assert.deepEqual(Array.from(toInterleaved(rows, 2, 1)), [0, 2, 1, 3, 10, 12, 11, 13]);
    assert.deepEqual(Array.from(fromInterleaved(toInterleaved(rows, 2, 1), 2, 1)), Array.from(rows));
    // …which is exactly what the llama2.c importer undid: wq rows in the file's order equal llama2.c's.
  });

  const logits = (p: Params, c: ReturnType<typeof resolveModelConfig>, ids: number[]) =>
    tf.tidy(() => Array.from(forward(p, c, tf.tensor2d([ids], [1, ids.length], 'int32')).logits.dataSync()));

  test('stories260K f32: every tensor read back equals the source; import gives identical logits and tokenizer', () => {
    const m = importLlama2c(STORIES_BIN, TOK512_PATH);
    const path = join(TMP, 's-f32.gguf');
    const { file } = toGguf(m.params, m.config, m.tokenizer, 'f32', 'stories260K');
    writeGguf(path, file);
    const read = readGguf(path);
    assert.equal(read.metadata['general.architecture']!.value, 'llama');
    assert.equal(read.metadata['llama.rope.dimension_count']!.value, 8);
    assert.equal(read.tensors.find((t) => t.name === 'output.weight'), undefined, 'tied: no output.weight');
    const tokens = read.metadata['tokenizer.ggml.tokens']!.value as string[];
    const types = read.metadata['tokenizer.ggml.token_type']!.value as number[];
    assert.deepEqual(tokens.slice(0, 4), ['<unk>', '<s>', '</s>', '<0x00>']);
    assert.deepEqual(types.slice(0, 4), [2, 3, 3, 6]);
    assert.ok(tokens.includes('▁the') && !tokens.some((t) => t.includes(' ')), "spaces as '▁'");
    for (const t of file.tensors) {
      const r = read.tensors.find((x) => x.name === t.name)!;
      assert.deepEqual(r.dims, t.dims, t.name);
      assert.deepEqual(Array.from(decodeTensor(r)), Array.from(decodeTensor(t)), t.name);
    }
    const wte = read.tensors.find((t) => t.name === 'token_embd.weight')!;
    assert.deepEqual(wte.dims, [64, 512]);
    assert.deepEqual(Array.from(decodeTensor(wte)), Array.from(m.params['wte.weight']!.dataSync()));
    const back = fromGguf(read, path);
    assert.deepEqual(back.config, m.config);
    for (const [k, v] of Object.entries(m.params)) assert.deepEqual(Array.from(back.params[k]!.dataSync()), Array.from(v.dataSync()), k);
    const text = 'Once upon a time, Lily saw a big dog.';
    assert.deepEqual(back.tokenizer.encode(text, { addBos: true }), m.tokenizer.encode(text, { addBos: true }));
    assert.deepEqual(logits(back.params, back.config, [1, 403, 407]), logits(m.params, m.config, [1, 403, 407]));
    disposeParams(back.params);
    disposeParams(m.params);
  });

  for (const type of ['q8_0', 'q4_0'] as const) {
    test(`stories260K ${type}: blocks for rows that are multiples of 32, F16 for ffn_down (172 wide); reads back to the codec's values`, () => {
      const m = importLlama2c(STORIES_BIN, TOK512_PATH);
      const path = join(TMP, `s-${type}.gguf`);
      const { file, summary } = toGguf(m.params, m.config, m.tokenizer, type, 'stories260K');
      writeGguf(path, file);
      assert.deepEqual(summary.keptF16, [0, 1, 2, 3, 4].map((i) => `blk.${i}.ffn_down.weight`));
      const read = readGguf(path);
      assert.equal(read.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!.type, type.toUpperCase());
      const back = fromGguf(read, path);
      // wte's values went through the block codec: equal to its round trip, and close to the source.
      const wte = m.params['wte.weight']!.dataSync() as Float32Array;
      const codec = type === 'q8_0' ? dequantizeQ8_0(quantizeQ8_0(wte), wte.length) : dequantizeQ4_0(quantizeQ4_0(wte), wte.length);
      assert.deepEqual(Array.from(back.params['wte.weight']!.dataSync()), Array.from(codec));
      const down = back.params['h.0.mlp.down_proj.weight']!.dataSync();
      const src = m.params['h.0.mlp.down_proj.weight']!.dataSync();
      assert.deepEqual(Array.from(down), Array.from(src, h), 'F16 rows read back as f16(source)');
      const a = logits(back.params, back.config, [1, 403, 407]), b = logits(m.params, m.config, [1, 403, 407]);
      const err = Math.max(...a.map((v, i) => Math.abs(v - b[i]!)));
      assert.ok(err > 0 && err < (type === 'q8_0' ? 0.5 : 5), `max logit difference ${err}`); // logits span about ±20
      disposeParams(back.params);
      disposeParams(m.params);
    });
  }

  test('gpt2 with a byte-level BPE: qkv fused on export, split on import; logits and tokenizer equal', () => {
    const c = resolveModelConfig({ arch: 'gpt2', vocab_size: 270, n_ctx: 16, n_layer: 2, n_embd: 32, n_head: 2 });
    const tok = Tokenizer.train(['to be or not to be, that is the question'], { vocabSize: 270 });
    const p = initParams(c, 3);
    const path = join(TMP, 'g.gguf');
    writeGguf(path, toGguf(p, c, tok, 'f32', 'tiny').file);
    const read = readGguf(path);
    assert.deepEqual(read.tensors.find((t) => t.name === 'blk.0.attn_qkv.weight')!.dims, [32, 96]);
    assert.equal(read.metadata['tokenizer.ggml.model']!.value, 'gpt2');
    const back = fromGguf(read, path);
    assert.deepEqual(logits(back.params, back.config, [5, 6, 7]), logits(p, c, [5, 6, 7]));
    assert.deepEqual(back.tokenizer.encode('that is the question'), tok.encode('that is the question'));
    disposeParams(back.params);
    disposeParams(p);
  });
});
