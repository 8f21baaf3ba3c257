/**
 * GGUF v3 (llama.cpp's file format): a reader and a writer, the Q8_0 / Q4_0 block codecs, and the
 * mapping between our models and llama.cpp's `llama` and `gpt2` architectures.
 *
 * Layout: "GGUF", version 3, tensor count, metadata count (u64s); metadata key/value pairs; tensor infos
 * (name, dims innermost first, ggml type, offset); padding to `general.alignment` (32); tensor data,
 * each tensor at an aligned offset. A torch [out, in] matrix is listed as dims [in, out], bytes unchanged.
 *
 * Facts llama.cpp depends on (checked with node-llama-cpp 3.21.1, test/interop-llamacpp.test.ts):
 *  - the `llama` architecture applies RoPE to interleaved pairs (2i, 2i+1), as Meta's and llama2.c's
 *    checkpoints; our model (like HF) rotates halves, so q/k rows are permuted back on export;
 *  - Q8_0 / Q4_0 rows must be a multiple of 32 long: other tensors stay F16 / F32 (types may mix);
 *  - tied embeddings: no `output.weight` (llama.cpp reuses token_embd);
 *  - sentencepiece vocab: '▁' for spaces, `<0xNN>` byte tokens typed 6, <unk> 2, <s>/</s> 3.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { f16ToF32, f32ToF16 } from '../checkpoint/safetensors.js';

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

export const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 } as const;
export type GgmlTypeName = keyof typeof GGML_TYPE;
const TYPE_NAMES = Object.fromEntries(Object.entries(GGML_TYPE).map(([k, v]) => [v, k])) as Record<number, GgmlTypeName>;

/** Metadata value types of the GGUF spec. */
const enum V {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
}

/** A metadata value with its GGUF type (numbers alone do not say u32 vs f32). */
export type GgufValue =
  | { type: 'u32' | 'i32' | 'f32' | 'u64' | 'u8' | 'i8' | 'u16' | 'i16' | 'i64' | 'f64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: 'string'; value: string[] }
  | { type: 'array'; itemType: 'f32' | 'i32' | 'u32'; value: number[] };

export const u32 = (value: number): GgufValue => ({ type: 'u32', value });
export const f32 = (value: number): GgufValue => ({ type: 'f32', value });
export const str = (value: string): GgufValue => ({ type: 'string', value });
export const bool = (value: boolean): GgufValue => ({ type: 'bool', value });

export interface GgufTensor {
  name: string;
  /** Dims innermost first, as in the file: [in, out] for a torch [out, in] matrix. */
  dims: number[];
  type: GgmlTypeName;
  /** The encoded bytes (F32 / F16 / Q8_0 / Q4_0 blocks). */
  data: Uint8Array;
}

export interface GgufFile {
  metadata: Record<string, GgufValue>;
  tensors: GgufTensor[];
}

export const QK = 32; // elements per Q8_0 / Q4_0 block
const ALIGNMENT = 32;

// ---------------------------------------------------------------------------------------------
// Block codecs (ggml's reference quantize_row_*_ref / dequantize_row_*)
// ---------------------------------------------------------------------------------------------

/** C's roundf: halves away from zero. */
const roundf = (x: number) => Math.sign(x) * Math.round(Math.abs(x));

/** Q8_0: per 32 values, f16 d = absmax/127 then 32 int8 q = roundf(x/d). 34 bytes a block. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % QK) throw new Error(`Q8_0 needs a multiple of ${QK} values, got ${x.length}`);
  const out = new Uint8Array((x.length / QK) * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / QK; b++) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[b * QK + j]!));
    const d = amax / 127, id = d ? 1 / d : 0;
    view.setUint16(b * 34, f32ToF16(d), true);
    for (let j = 0; j < QK; j++) view.setInt8(b * 34 + 2 + j, roundf(Math.fround(x[b * QK + j]! * Math.fround(id))));
  }
  return out;
}

export function dequantizeQ8_0(data: Uint8Array, n: number): Float32Array {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(n);
  for (let b = 0; b < n / QK; b++) {
    const d = f16ToF32(view.getUint16(b * 34, true));
    for (let j = 0; j < QK; j++) out[b * QK + j] = view.getInt8(b * 34 + 2 + j) * d;
  }
  return out;
}

/**
 * Q4_0: per 32 values, f16 d = m / −8 where m is the value of largest magnitude (sign kept), then
 * q = min(15, trunc(x/d + 8.5)); byte j holds q[j] (low nibble) and q[j + 16] (high). 18 bytes a block.
 */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  if (x.length % QK) throw new Error(`Q4_0 needs a multiple of ${QK} values, got ${x.length}`);
  const out = new Uint8Array((x.length / QK) * 18);
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / QK; b++) {
    let amax = 0, max = 0;
    for (let j = 0; j < QK; j++) {
      const v = x[b * QK + j]!;
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8), id = d ? Math.fround(1 / d) : 0;
    view.setUint16(b * 18, f32ToF16(d), true);
    for (let j = 0; j < QK / 2; j++) {
      const q0 = Math.min(15, Math.trunc(Math.fround(Math.fround(x[b * QK + j]! * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(Math.fround(Math.fround(x[b * QK + j + 16]! * id) + 8.5)));
      out[b * 18 + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

export function dequantizeQ4_0(data: Uint8Array, n: number): Float32Array {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(n);
  for (let b = 0; b < n / QK; b++) {
    const d = f16ToF32(view.getUint16(b * 18, true));
    for (let j = 0; j < QK / 2; j++) {
      const byte = data[b * 18 + 2 + j]!;
      out[b * QK + j] = ((byte & 15) - 8) * d;
      out[b * QK + j + 16] = ((byte >> 4) - 8) * d;
    }
  }
  return out;
}

export function encodeTensor(values: Float32Array, type: GgmlTypeName): Uint8Array {
  switch (type) {
    case 'F32':
      return new Uint8Array(Float32Array.from(values).buffer);
    case 'F16':
      return new Uint8Array(Uint16Array.from(values, f32ToF16).buffer);
    case 'Q8_0':
      return quantizeQ8_0(values);
    case 'Q4_0':
      return quantizeQ4_0(values);
  }
}

export function decodeTensor(t: GgufTensor): Float32Array {
  const n = t.dims.reduce((a, b) => a * b, 1);
  switch (t.type) {
    case 'F32':
      return new Float32Array(new Uint8Array(t.data).buffer, 0, n); // a copy: a Buffer's .slice() is a view into a pooled buffer
    case 'F16': {
      const h = new Uint16Array(new Uint8Array(t.data).buffer, 0, n);
      return Float32Array.from(h, f16ToF32);
    }
    case 'Q8_0':
      return dequantizeQ8_0(t.data, n);
    case 'Q4_0':
      return dequantizeQ4_0(t.data, n);
  }
}

export function tensorBytes(type: GgmlTypeName, n: number): number {
  return type === 'F32' ? 4 * n : type === 'F16' ? 2 * n : type === 'Q8_0' ? (n / QK) * 34 : (n / QK) * 18;
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

class Writer {
  private chunks: Uint8Array[] = [];
  length = 0;
  private push(b: Uint8Array) {
    this.chunks.push(b);
    this.length += b.length;
  }
  private num(bytes: number, set: (v: DataView) => void) {
    const b = new Uint8Array(bytes);
    set(new DataView(b.buffer));
    this.push(b);
  }
  u8 = (v: number) => this.num(1, (d) => d.setUint8(0, v));
  i8 = (v: number) => this.num(1, (d) => d.setInt8(0, v));
  u16 = (v: number) => this.num(2, (d) => d.setUint16(0, v, true));
  i16 = (v: number) => this.num(2, (d) => d.setInt16(0, v, true));
  u32 = (v: number) => this.num(4, (d) => d.setUint32(0, v, true));
  i32 = (v: number) => this.num(4, (d) => d.setInt32(0, v, true));
  f32 = (v: number) => this.num(4, (d) => d.setFloat32(0, v, true));
  f64 = (v: number) => this.num(8, (d) => d.setFloat64(0, v, true));
  u64 = (v: number) => this.num(8, (d) => d.setBigUint64(0, BigInt(v), true));
  i64 = (v: number) => this.num(8, (d) => d.setBigInt64(0, BigInt(v), true));
  bytes = (b: Uint8Array) => this.push(b);
  string = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  };
  pad = (align: number) => this.push(new Uint8Array((align - (this.length % align)) % align));
  concat(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

const SCALAR_CODES: Record<string, V> = { u8: V.U8, i8: V.I8, u16: V.U16, i16: V.I16, u32: V.U32, i32: V.I32, f32: V.F32, bool: V.BOOL, string: V.STRING, u64: V.U64, i64: V.I64, f64: V.F64 };

function writeScalar(w: Writer, type: string, value: number | boolean | string): void {
  switch (type) {
    case 'u8': return w.u8(value as number);
    case 'i8': return w.i8(value as number);
    case 'u16': return w.u16(value as number);
    case 'i16': return w.i16(value as number);
    case 'u32': return w.u32(value as number);
    case 'i32': return w.i32(value as number);
    case 'f32': return w.f32(value as number);
    case 'u64': return w.u64(value as number);
    case 'i64': return w.i64(value as number);
    case 'f64': return w.f64(value as number);
    case 'bool': return w.u8(value ? 1 : 0);
    case 'string': return w.string(value as string);
  }
  throw new Error(`gguf: unknown value type ${type}`);
}

export function encodeGguf(f: GgufFile): Buffer {
  const w = new Writer();
  w.u32(0x46554747); // "GGUF"
  w.u32(3);
  w.u64(f.tensors.length);
  w.u64(Object.keys(f.metadata).length);
  for (const [key, v] of Object.entries(f.metadata)) {
    w.string(key);
    if (v.type === 'array') {
      w.u32(V.ARRAY);
      w.u32(SCALAR_CODES[v.itemType]!);
      w.u64(v.value.length);
      for (const item of v.value) writeScalar(w, v.itemType, item);
    } else {
      w.u32(SCALAR_CODES[v.type]!);
      writeScalar(w, v.type, v.value);
    }
  }
  let offset = 0;
  for (const t of f.tensors) {
    const n = t.dims.reduce((a, b) => a * b, 1);
    if (t.data.length !== tensorBytes(t.type, n)) throw new Error(`gguf: tensor ${t.name}: ${t.data.length} bytes for ${t.type} dims [${t.dims}]`);
    w.string(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(GGML_TYPE[t.type]);
    w.u64(offset);
    offset += Math.ceil(t.data.length / ALIGNMENT) * ALIGNMENT;
  }
  w.pad(ALIGNMENT);
  for (const t of f.tensors) {
    w.bytes(t.data);
    w.pad(ALIGNMENT);
  }
  return w.concat();
}

export function writeGguf(path: string, f: GgufFile): void {
  writeFileSync(path, encodeGguf(f));
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

export function decodeGguf(buf: Uint8Array, source = '<buffer>'): GgufFile {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let at = 0;
  const fail = (reason: string): never => {
    throw new Error(`${source}: invalid GGUF file: ${reason}`);
  };
  const need = (n: number) => {
    if (at + n > buf.byteLength) fail(`truncated at byte ${at} (needs ${n} more, file is ${buf.byteLength})`);
  };
  const u32r = () => (need(4), (at += 4), view.getUint32(at - 4, true));
  const u64r = () => {
    need(8);
    const v = view.getBigUint64(at, true);
    at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`a 64-bit count ${v} is out of range`);
    return Number(v);
  };
  const strr = () => {
    const n = u64r();
    need(n);
    const s = Buffer.from(buf.buffer, buf.byteOffset + at, n).toString('utf8');
    at += n;
    return s;
  };
  const scalar = (code: number): { type: string; value: number | boolean | string } => {
    switch (code) {
      case V.U8: need(1); return { type: 'u8', value: view.getUint8((at += 1) - 1) };
      case V.I8: need(1); return { type: 'i8', value: view.getInt8((at += 1) - 1) };
      case V.U16: need(2); return { type: 'u16', value: view.getUint16((at += 2) - 2, true) };
      case V.I16: need(2); return { type: 'i16', value: view.getInt16((at += 2) - 2, true) };
      case V.U32: return { type: 'u32', value: u32r() };
      case V.I32: need(4); return { type: 'i32', value: view.getInt32((at += 4) - 4, true) };
      case V.F32: need(4); return { type: 'f32', value: view.getFloat32((at += 4) - 4, true) };
      case V.BOOL: need(1); return { type: 'bool', value: view.getUint8((at += 1) - 1) !== 0 };
      case V.STRING: return { type: 'string', value: strr() };
      case V.U64: return { type: 'u64', value: u64r() };
      case V.I64: need(8); return { type: 'i64', value: Number(view.getBigInt64((at += 8) - 8, true)) };
      case V.F64: need(8); return { type: 'f64', value: view.getFloat64((at += 8) - 8, true) };
    }
    return fail(`unknown metadata value type ${code} at byte ${at - 4}`);
  };
  if (buf.byteLength < 24 || u32r() !== 0x46554747) fail('no "GGUF" magic');
  const version = u32r();
  if (version !== 3 && version !== 2) fail(`version ${version} (this reader knows 2 and 3)`);
  const nTensors = u64r(), nKv = u64r();
  const metadata: Record<string, GgufValue> = {};
  for (let i = 0; i < nKv; i++) {
    const key = strr();
    const code = u32r();
    if (code === V.ARRAY) {
      const itemCode = u32r(), n = u64r();
      const items: unknown[] = [];
      let itemType = 'u8';
      for (let j = 0; j < n; j++) {
        const s = scalar(itemCode);
        itemType = s.type;
        items.push(s.value);
      }
      metadata[key] = { type: 'array', itemType, value: items } as GgufValue;
    } else {
      metadata[key] = scalar(code) as GgufValue;
    }
  }
  const alignment = metadata['general.alignment']?.type === 'u32' ? (metadata['general.alignment'].value as number) : ALIGNMENT;
  const infos: Array<{ name: string; dims: number[]; type: GgmlTypeName; offset: number }> = [];
  for (let i = 0; i < nTensors; i++) {
    const name = strr();
    const nd = u32r();
    if (nd > 4) fail(`tensor ${name}: ${nd} dims`);
    const dims = Array.from({ length: nd }, () => u64r());
    const code = u32r();
    const type = TYPE_NAMES[code];
    if (!type) fail(`tensor ${name}: ggml type ${code} is not supported (F32, F16, Q8_0, Q4_0 are)`);
    infos.push({ name, dims, type: type!, offset: u64r() });
  }
  const dataStart = Math.ceil(at / alignment) * alignment;
  const tensors = infos.map((t) => {
    const n = t.dims.reduce((a, b) => a * b, 1);
    const bytes = tensorBytes(t.type, n);
    const begin = dataStart + t.offset;
    if (begin + bytes > buf.byteLength) fail(`tensor ${t.name}: data [${begin}, ${begin + bytes}) past the end of the file (${buf.byteLength} bytes)`);
    return { name: t.name, dims: t.dims, type: t.type, data: buf.subarray(begin, begin + bytes) };
  });
  return { metadata, tensors };
}

export function readGguf(path: string): GgufFile {
  return decodeGguf(readFileSync(path), path);
}
