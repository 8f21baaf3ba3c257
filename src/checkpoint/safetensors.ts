/**
 * Reader/writer for the safetensors format (https://github.com/huggingface/safetensors).
 *
 * File layout:
 *   [8 bytes]  N = header length, unsigned 64-bit little-endian
 *   [N bytes]  JSON header: { "<name>": { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { str: str } }
 *              padded with spaces so the byte buffer starts 8-byte aligned
 *   [rest]     byte buffer; data_offsets are relative to its start
 *
 * We write tensors in sorted-name order, back to back, like the reference implementation,
 * and we validate strictly when reading (no gaps, no overlaps, no trailing bytes), so files
 * we accept are files the Python library accepts too.
 *
 * No TensorFlow dependency on purpose: this module only moves bytes.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';

export type DType = 'F32' | 'F16' | 'BF16' | 'I8' | 'U8' | 'I32' | 'I64' | 'F64' | 'I16' | 'U16' | 'U32' | 'BOOL';

export type TensorArray =
  | Float32Array
  | Int8Array
  | Uint8Array
  | Int32Array
  | Float64Array
  | BigInt64Array
  | Uint16Array
  | Int16Array
  | Uint32Array;

/**
 * One tensor. `data` is a flat row-major array. F16 and BF16 are kept as raw bit patterns
 * in a Uint16Array (JS has no half-float array); use `toFloat32` to get numbers. BOOL is a Uint8Array of 0/1.
 */
export interface TensorData {
  dtype: DType;
  shape: number[];
  data: TensorArray;
}

export interface DecodedSafetensors {
  tensors: Record<string, TensorData>;
  metadata: Record<string, string>;
}

type TypedArrayCtor = { new (buffer: ArrayBuffer, byteOffset?: number, length?: number): TensorArray; name: string; BYTES_PER_ELEMENT: number };

/** dtype → element size in bytes and the JS array class that holds it. */
const DTYPES: Record<DType, TypedArrayCtor> = {
  F32: Float32Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  F64: Float64Array,
  I8: Int8Array,
  U8: Uint8Array,
  I16: Int16Array,
  U16: Uint16Array,
  I32: Int32Array,
  U32: Uint32Array,
  I64: BigInt64Array,
  BOOL: Uint8Array,
};

const METADATA_KEY = '__metadata__';
/** Same cap as the reference implementation: protects against absurd header lengths. */
const MAX_HEADER_BYTES = 100_000_000;

// Typed arrays use the machine's byte order and the format is little-endian. Every platform
// Node runs on in practice is little-endian; fail loudly rather than corrupt data elsewhere.
const LITTLE_ENDIAN = endianness() === 'LE';

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.hasOwn(DTYPES, s);
}

export function dtypeByteSize(dtype: DType): number {
  return DTYPES[dtype].BYTES_PER_ELEMENT;
}

/** Number of elements for a shape; [] (a scalar) has one element. */
export function numElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

export function encodeSafetensors(tensors: Record<string, TensorData>, metadata?: Record<string, string>): Buffer {
  assertLittleEndian();
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header[METADATA_KEY] = checkMetadata(metadata, 'metadata');

  let offset = 0;
  for (const name of names) {
    const t = tensors[name]!;
    checkTensorForWrite(name, t);
    const end = offset + t.data.byteLength;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, end] };
    offset = end;
  }

  const headerBytes = paddedHeader(header);
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);

  let pos = 8 + headerBytes.length;
  for (const name of names) {
    const { data } = tensors[name]!;
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), pos);
    pos += data.byteLength;
  }
  return out;
}

/** JSON header as bytes, padded with spaces to a multiple of 8 (so tensor data is 8-byte aligned). */
function paddedHeader(header: Record<string, unknown>): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  return Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
}

function checkTensorForWrite(name: string, t: TensorData): void {
  const where = `tensor "${name}"`;
  if (name === METADATA_KEY) throw new Error(`${where}: name is reserved`);
  if (!isDType(t.dtype)) throw new Error(`${where}: unknown dtype ${JSON.stringify(t.dtype)}`);
  checkShape(t.shape, where);
  const ctor = DTYPES[t.dtype];
  if (!(t.data instanceof ctor)) {
    throw new Error(`${where}: dtype ${t.dtype} needs a ${ctor.name}, got ${t.data?.constructor?.name ?? typeof t.data}`);
  }
  const n = numElements(t.shape);
  if (t.data.length !== n) {
    throw new Error(`${where}: shape [${t.shape.join(', ')}] has ${n} elements but data has ${t.data.length}`);
  }
}

function checkShape(shape: unknown, where: string): asserts shape is number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${where}: shape must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
  }
}

function checkMetadata(metadata: unknown, where: string): Record<string, string> {
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
    throw new Error(`${where}: __metadata__ must be an object of strings`);
  }
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new Error(`${where}: __metadata__.${k} must be a string, got ${typeof v}`);
  }
  return metadata as Record<string, string>;
}

function assertLittleEndian(): void {
  if (!LITTLE_ENDIAN) throw new Error('safetensors: big-endian machines are not supported');
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Parse a safetensors file held in memory. `source` (usually the path) prefixes every error message.
 * Returned arrays are views into `buf` when the data is suitably aligned, copies otherwise;
 * don't mutate `buf` afterwards if you keep the tensors.
 */
export function decodeSafetensors(buf: Uint8Array, source = '<buffer>'): DecodedSafetensors {
  assertLittleEndian();
  const fail = (reason: string): never => {
    throw new Error(`${source}: invalid safetensors file: ${reason}`);
  };

  if (buf.byteLength < 8) fail(`truncated file (${buf.byteLength} bytes, need at least 8 for the header length)`);
  const headerLen = new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true);
  if (headerLen > BigInt(buf.byteLength - 8)) {
    fail(`header length ${headerLen} goes beyond the end of the file (${buf.byteLength} bytes)`);
  }
  if (headerLen > BigInt(MAX_HEADER_BYTES)) fail(`header length ${headerLen} is larger than the ${MAX_HEADER_BYTES}-byte limit`);
  const dataStart = 8 + Number(headerLen);

  const { entries, metadata } = parseHeader(buf.subarray(8, dataStart), fail);
  checkLayout(entries, buf.byteLength - dataStart, fail);

  const tensors: Record<string, TensorData> = {};
  for (const e of entries) {
    const data = typedArrayAt(buf, dataStart + e.begin, dataStart + e.end, DTYPES[e.dtype]);
    tensors[e.name] = { dtype: e.dtype, shape: e.shape, data };
  }
  return { tensors, metadata };
}

function parseHeader(bytes: Uint8Array, fail: (reason: string) => never): { entries: HeaderEntry[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    fail(`header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header must be a JSON object');

  let metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      try {
        metadata = checkMetadata(raw, 'header');
      } catch (err) {
        fail((err as Error).message);
      }
      continue;
    }
    entries.push(parseEntry(name, raw, fail));
  }
  return { entries, metadata };
}

function parseEntry(name: string, raw: unknown, fail: (reason: string) => never): HeaderEntry {
  const where = `tensor "${name}"`;
  if (typeof raw !== 'object' || raw === null) fail(`${where}: header entry must be an object`);
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (!isDType(dtype)) fail(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
  try {
    checkShape(shape, where);
  } catch (err) {
    fail((err as Error).message);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    fail(`${where}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  const dt = dtype as DType;
  const dims = shape as number[];
  const expected = numElements(dims) * dtypeByteSize(dt);
  if (end - begin !== expected) {
    fail(`${where}: shape [${dims.join(', ')}] x ${dt} needs ${expected} bytes but data_offsets span ${end - begin}`);
  }
  return { name, dtype: dt, shape: dims, begin, end };
}

/** Tensors must tile the byte buffer exactly: in range, no overlap, no gap, no trailing bytes. */
function checkLayout(entries: HeaderEntry[], dataBytes: number, fail: (reason: string) => never): void {
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expectedBegin = 0;
  let prev: HeaderEntry | undefined;
  for (const e of byOffset) {
    if (e.end > dataBytes) {
      fail(`tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] are out of range (byte buffer is ${dataBytes} bytes)`);
    }
    if (e.begin < expectedBegin) fail(`tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] overlap tensor "${prev!.name}"`);
    if (e.begin > expectedBegin) fail(`tensor "${e.name}": gap of ${e.begin - expectedBegin} unused bytes before its data`);
    expectedBegin = e.end;
    prev = e;
  }
  if (expectedBegin !== dataBytes) fail(`${dataBytes - expectedBegin} trailing bytes after the last tensor`);
}

/** A typed array over bytes [start, end) of buf: a view when aligned, a copy when not. */
function typedArrayAt(buf: Uint8Array, start: number, end: number, ctor: TypedArrayCtor): TensorArray {
  const byteOffset = buf.byteOffset + start;
  const length = (end - start) / ctor.BYTES_PER_ELEMENT;
  if (byteOffset % ctor.BYTES_PER_ELEMENT === 0) return new ctor(buf.buffer as ArrayBuffer, byteOffset, length);
  // Misaligned (e.g. the caller passed a subarray at an odd offset): typed arrays refuse that, so copy.
  const copy = new ArrayBuffer(end - start);
  new Uint8Array(copy).set(buf.subarray(start, end));
  return new ctor(copy, 0, length);
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

export function readSafetensors(path: string): DecodedSafetensors {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read: ${(err as Error).message}`);
  }
  return decodeSafetensors(buf, path);
}

/** Plain write; wrap in `writeDirAtomic` (dir.ts) for crash safety. */
export function writeSafetensors(path: string, tensors: Record<string, TensorData>, metadata?: Record<string, string>): void {
  writeFileSync(path, encodeSafetensors(tensors, metadata));
}

// ---------------------------------------------------------------------------------------------
// Half-precision helpers
// ---------------------------------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE 754 half (16-bit bit pattern) → number. */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero / subnormal
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** bfloat16 (16-bit bit pattern) → number. bf16 is just the top half of an f32. */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** number → bfloat16 bit pattern, rounding to nearest even (as PyTorch does). */
export function f32ToBf16(value: number): number {
  f32Scratch[0] = value;
  const bits = u32Scratch[0]!;
  if (Number.isNaN(value)) return 0x7fc0;
  const roundingBias = 0x7fff + ((bits >>> 16) & 1);
  return ((bits + roundingBias) >>> 16) & 0xffff;
}

/** number → IEEE half bit pattern, rounding to nearest even; overflows to ±Infinity. */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // too big → Inf
  if (e <= 0) {
    // Result is subnormal (or zero) in half precision.
    if (e < -10) return sign;
    mant = (mant | 0x800000) >>> 0;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = mant & ((1 << shift) - 1);
    let out = mant >>> shift;
    if (rem > half || (rem === half && out & 1)) out++;
    return sign | out;
  }
  let out = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && out & 1)) out++; // may carry into the exponent: still correct
  return sign | out;
}

let F16_TABLE: Float32Array | undefined;
function f16Table(): Float32Array {
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let b = 0; b < 65536; b++) F16_TABLE[b] = f16ToF32(b);
  }
  return F16_TABLE;
}

const FLOAT_DTYPES: ReadonlySet<DType> = new Set(['F32', 'F16', 'BF16', 'F64']);

/** Float32 values of a float tensor (F32 is returned as-is, not copied). Throws for integer dtypes. */
export function toFloat32(t: TensorData): Float32Array {
  switch (t.dtype) {
    case 'F32':
      return t.data as Float32Array;
    case 'F64':
      return Float32Array.from(t.data as Float64Array);
    case 'F16': {
      // A 64K-entry table: a lookup per element instead of a function call (imports of large models).
      const table = f16Table(), src = t.data as Uint16Array, out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
      return out;
    }
    case 'BF16': {
      // bf16 is the top half of an f32: shift the bits into place.
      const src = t.data as Uint16Array, bits = new Uint32Array(src.length);
      for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
      return new Float32Array(bits.buffer);
    }
    default:
      throw new Error(`toFloat32: dtype ${t.dtype} is not a float dtype (expected one of ${[...FLOAT_DTYPES].join(', ')})`);
  }
}

/** Build a float tensor of the given dtype from float32 values (for saving in reduced precision). */
export function fromFloat32(values: Float32Array, shape: number[], dtype: 'F32' | 'F16' | 'BF16' | 'F64' = 'F32'): TensorData {
  switch (dtype) {
    case 'F32':
      return { dtype, shape, data: values };
    case 'F64':
      return { dtype, shape, data: Float64Array.from(values) };
    case 'F16':
      return { dtype, shape, data: Uint16Array.from(values, f32ToF16) };
    case 'BF16':
      return { dtype, shape, data: Uint16Array.from(values, f32ToBf16) };
  }
}
