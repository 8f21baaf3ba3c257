/**
 * Our model ↔ GGUF for llama.cpp: `llmctl export --format gguf` and `llmctl import --format gguf`.
 *
 *   ours                 llama (LlamaForCausalLM family)     gpt2
 *   wte                  token_embd                          token_embd
 *   wpe                  —                                   position_embd
 *   h.i.ln_1             blk.i.attn_norm                     blk.i.attn_norm (+ bias)
 *   h.i.attn.q/k/v_proj  blk.i.attn_q / attn_k / attn_v      blk.i.attn_qkv (q | k | v rows fused)
 *   h.i.attn.o_proj      blk.i.attn_output                   blk.i.attn_output
 *   h.i.ln_2             blk.i.ffn_norm                      blk.i.ffn_norm
 *   h.i.mlp.gate_proj    blk.i.ffn_gate                      —
 *   h.i.mlp.up_proj      blk.i.ffn_up                        blk.i.ffn_up
 *   h.i.mlp.down_proj    blk.i.ffn_down                      blk.i.ffn_down
 *   ln_f                 output_norm                         output_norm
 *   lm_head              output (absent when tied)           output (absent when tied)
 */
import * as tf from '@tensorflow/tfjs-core';
import { type ModelConfig, type Params, paramShapes, resolveModelConfig } from '../model/gpt.js';
import { Tokenizer } from '../tokenizer/index.js';
import { type GgmlTypeName, type GgufFile, type GgufTensor, type GgufValue, QK, bool, decodeTensor, encodeTensor, f32, str, u32 } from './gguf.js';

export type ExportType = 'f32' | 'f16' | 'q8_0' | 'q4_0';

const FILE_TYPE: Record<ExportType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7 }; // llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q4_0, MOSTLY_Q8_0
const MATRIX_TYPE: Record<ExportType, GgmlTypeName> = { f32: 'F32', f16: 'F16', q8_0: 'Q8_0', q4_0: 'Q4_0' };

/** Our [in, out] matrix as torch's [out, in] rows (row-major). */
function rowsOf(t: tf.Tensor): Float32Array {
  return tf.tidy(() => Float32Array.from(tf.transpose(t).dataSync() as Float32Array));
}

function valuesOf(t: tf.Tensor): Float32Array {
  return Float32Array.from(t.dataSync() as Float32Array);
}

/**
 * Rows of each head from "rotate half" order (HF, ours) to interleaved pairs (llama.cpp, Meta, llama2.c):
 * interleaved row 2i + j ← half-layout row j·hd/2 + i. `width` = values per row (1 for a bias).
 */
export function toInterleaved(x: Float32Array, heads: number, width: number): Float32Array {
  const hd = x.length / width / heads, half = hd / 2;
  const out = new Float32Array(x.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) out.set(x.subarray((h * hd + j * half + i) * width, (h * hd + j * half + i + 1) * width), (h * hd + 2 * i + j) * width);
    }
  }
  return out;
}

export function fromInterleaved(x: Float32Array, heads: number, width: number): Float32Array {
  const hd = x.length / width / heads, half = hd / 2;
  const out = new Float32Array(x.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) out.set(x.subarray((h * hd + 2 * i + j) * width, (h * hd + 2 * i + j + 1) * width), (h * hd + j * half + i) * width);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer metadata
// ---------------------------------------------------------------------------------------------

const BYTE_PIECE = /^<0x[0-9A-Fa-f]{2}>$/;

interface TokenizerJson {
  model: { vocab: Record<string, number>; merges: Array<string | [string, string]> };
  added_tokens: Array<{ id: number; content: string; special: boolean }>;
}

function tokenizerMetadata(tok: Tokenizer, vocabSize: number): Record<string, GgufValue> {
  const json = tok.toJSON() as TokenizerJson;
  const tokens: string[] = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const types: number[] = Array(vocabSize).fill(5); // UNUSED until seen
  for (const [t, id] of Object.entries(json.model.vocab)) {
    if (id < vocabSize) {
      tokens[id] = t;
      types[id] = 1;
    }
  }
  for (const a of json.added_tokens) {
    if (a.id < vocabSize) {
      tokens[a.id] = a.content;
      types[a.id] = a.special ? 3 : 4; // CONTROL / USER_DEFINED
    }
  }
  const ids: Record<string, GgufValue> = {
    'tokenizer.ggml.eos_token_id': u32(tok.eosId),
    'tokenizer.ggml.padding_token_id': u32(tok.padId),
    ...(tok.bosId !== undefined ? { 'tokenizer.ggml.bos_token_id': u32(tok.bosId) } : {}),
    ...(tok.chatTemplate ? { 'tokenizer.chat_template': str(tok.chatTemplate) } : {}),
  };
  if (tok.kind === 'sentencepiece') {
    // llama.cpp's SPM merges the adjacent pair whose joined piece scores highest: score = −(merge rank).
    const scores = Array(vocabSize).fill(0);
    const seen = new Set<number>();
    json.model.merges.forEach((m, rank) => {
      const [a, b] = Array.isArray(m) ? m : (m.split(' ') as [string, string]);
      const id = json.model.vocab[a + b];
      if (id !== undefined && !seen.has(id)) {
        seen.add(id);
        scores[id] = -rank;
      }
    });
    for (let i = 0; i < vocabSize; i++) {
      if (types[i] === 1 && BYTE_PIECE.test(tokens[i]!)) types[i] = 6;
      if (tokens[i] === '<unk>') types[i] = 2;
      tokens[i] = tokens[i]!.replaceAll(' ', '▁');
    }
    return {
      'tokenizer.ggml.model': str('llama'),
      'tokenizer.ggml.tokens': { type: 'array', itemType: 'string', value: tokens },
      'tokenizer.ggml.scores': { type: 'array', itemType: 'f32', value: scores },
      'tokenizer.ggml.token_type': { type: 'array', itemType: 'i32', value: types },
      ...(tokens.indexOf('<unk>') >= 0 ? { 'tokenizer.ggml.unknown_token_id': u32(tokens.indexOf('<unk>')) } : {}),
      'tokenizer.ggml.add_bos_token': bool(tok.bosId !== undefined),
      'tokenizer.ggml.add_eos_token': bool(false),
      ...ids,
    };
  }
  const merges = json.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m));
  return {
    'tokenizer.ggml.model': str('gpt2'),
    'tokenizer.ggml.pre': str('gpt-2'),
    'tokenizer.ggml.tokens': { type: 'array', itemType: 'string', value: tokens },
    'tokenizer.ggml.token_type': { type: 'array', itemType: 'i32', value: types },
    'tokenizer.ggml.merges': { type: 'array', itemType: 'string', value: merges },
    'tokenizer.ggml.add_bos_token': bool(false),
    ...ids,
  };
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

export interface ExportSummary {
  /** ggml type → tensor count */
  types: Record<string, number>;
  /** 2-D tensors kept at F16 because their rows are not a multiple of 32 */
  keptF16: string[];
}

/** A float model (quantized checkpoints are dequantized by the caller) as a GGUF file of the given type. */
export function toGguf(params: Params, c: ModelConfig, tok: Tokenizer, type: ExportType, name: string): { file: GgufFile; summary: ExportSummary } {
  const tensors: GgufTensor[] = [];
  const summary: ExportSummary = { types: {}, keptF16: [] };
  const add = (ggufName: string, values: Float32Array, dims: number[]) => {
    let t: GgmlTypeName = dims.length === 1 ? 'F32' : MATRIX_TYPE[type];
    if ((t === 'Q8_0' || t === 'Q4_0') && dims[0]! % QK !== 0) {
      t = 'F16';
      summary.keptF16.push(ggufName);
    }
    tensors.push({ name: ggufName, dims, type: t, data: encodeTensor(values, t) });
    summary.types[t] = (summary.types[t] ?? 0) + 1;
  };
  const d = c.n_embd, hd = d / c.n_head;
  const matrix = (ggufName: string, ours: string, rows?: (x: Float32Array, width: number) => Float32Array) => {
    const t = params[ours]!;
    const [inn, out] = t.shape as [number, number];
    const r = rowsOf(t);
    add(ggufName, rows ? rows(r, inn) : r, [inn, out]);
  };
  const vector = (ggufName: string, ours: string, f?: (x: Float32Array) => Float32Array) => {
    const v = valuesOf(params[ours]!);
    add(ggufName, f ? f(v) : v, [v.length]);
  };
  add('token_embd.weight', valuesOf(params['wte.weight']!), [d, c.vocab_size]);
  if (c.arch === 'gpt2') {
    if (!c.bias) throw new Error('gguf export: llama.cpp\'s gpt2 architecture needs biases (this model has bias: false)');
    if (c.n_kv_head !== c.n_head) throw new Error('gguf export: llama.cpp\'s gpt2 architecture has no grouped-query attention');
    add('position_embd.weight', valuesOf(params['wpe.weight']!), [d, c.n_ctx]);
  }
  for (let i = 0; i < c.n_layer; i++) {
    const h = `h.${i}`, b = `blk.${i}`;
    const norm = (g: string, o: string) => {
      vector(`${b}.${g}.weight`, `${o}.weight`);
      if (c.arch === 'gpt2') vector(`${b}.${g}.bias`, `${o}.bias`);
    };
    const lin = (g: string, o: string, heads?: number) => {
      matrix(`${b}.${g}.weight`, `${o}.weight`, heads ? (x, w) => toInterleaved(x, heads, w) : undefined);
      if (c.bias) vector(`${b}.${g}.bias`, `${o}.bias`, heads ? (x) => toInterleaved(x, heads, 1) : undefined);
    };
    norm('attn_norm', `${h}.ln_1`);
    if (c.arch === 'llama') {
      lin('attn_q', `${h}.attn.q_proj`, c.n_head);
      lin('attn_k', `${h}.attn.k_proj`, c.n_kv_head);
      lin('attn_v', `${h}.attn.v_proj`);
    } else {
      const rows = ['q_proj', 'k_proj', 'v_proj'].map((p) => rowsOf(params[`${h}.attn.${p}.weight`]!));
      const fused = new Float32Array(3 * d * d);
      rows.forEach((r, k) => fused.set(r, k * d * d));
      add(`${b}.attn_qkv.weight`, fused, [d, 3 * d]);
      const biases = ['q_proj', 'k_proj', 'v_proj'].map((p) => valuesOf(params[`${h}.attn.${p}.bias`]!));
      const fb = new Float32Array(3 * d);
      biases.forEach((v, k) => fb.set(v, k * d));
      add(`${b}.attn_qkv.bias`, fb, [3 * d]);
    }
    lin('attn_output', `${h}.attn.o_proj`);
    norm('ffn_norm', `${h}.ln_2`);
    if (c.arch === 'llama') lin('ffn_gate', `${h}.mlp.gate_proj`);
    lin('ffn_up', `${h}.mlp.up_proj`);
    lin('ffn_down', `${h}.mlp.down_proj`);
  }
  vector('output_norm.weight', 'ln_f.weight');
  if (c.arch === 'gpt2') vector('output_norm.bias', 'ln_f.bias');
  if (!c.tie_embeddings) matrix('output.weight', 'lm_head.weight');

  const a = c.arch;
  const metadata: Record<string, GgufValue> = {
    'general.architecture': str(a),
    'general.name': str(name),
    'general.file_type': u32(FILE_TYPE[type]),
    'general.quantization_version': u32(2),
    [`${a}.context_length`]: u32(c.n_ctx),
    [`${a}.embedding_length`]: u32(d),
    [`${a}.block_count`]: u32(c.n_layer),
    [`${a}.feed_forward_length`]: u32(c.n_inner),
    [`${a}.attention.head_count`]: u32(c.n_head),
    ...(a === 'llama'
      ? {
          'llama.attention.head_count_kv': u32(c.n_kv_head),
          'llama.rope.freq_base': f32(c.rope_theta),
          'llama.rope.dimension_count': u32(hd),
          'llama.attention.layer_norm_rms_epsilon': f32(c.norm_eps),
          'llama.vocab_size': u32(c.vocab_size),
        }
      : { 'gpt2.attention.layer_norm_epsilon': f32(c.norm_eps) }),
    ...tokenizerMetadata(tok, c.vocab_size),
  };
  return { file: { metadata, tensors }, summary };
}

// ---------------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------------

function meta<T extends number | string | boolean>(f: GgufFile, key: string, where: string): T {
  const v = f.metadata[key];
  if (!v || v.type === 'array') throw new Error(`${where}: metadata '${key}' is missing`);
  // f32 values (eps, RoPE base) come back as the nearest float32 (1e-5 → 9.99999974e-6): take the shortest decimal.
  return (v.type === 'f32' ? Number(v.value.toPrecision(7)) : v.value) as T;
}

/** A GGUF file of the llama or gpt2 architecture (F32/F16/Q8_0/Q4_0 tensors) as our config, params and tokenizer. */
export function fromGguf(f: GgufFile, where: string): { config: ModelConfig; params: Params; tokenizer: Tokenizer } {
  const a = meta<string>(f, 'general.architecture', where);
  if (a !== 'llama' && a !== 'gpt2') throw new Error(`${where}: architecture '${a}' is not supported (llama, gpt2)`);
  const byName = new Map(f.tensors.map((t) => [t.name, t]));
  const tokens = f.metadata['tokenizer.ggml.tokens'];
  if (!tokens || tokens.type !== 'array' || tokens.itemType !== 'string') throw new Error(`${where}: metadata 'tokenizer.ggml.tokens' is missing`);
  const emb = byName.get('token_embd.weight');
  if (!emb) throw new Error(`${where}: missing tensor 'token_embd.weight'`);
  const config = resolveModelConfig({
    arch: a,
    vocab_size: emb.dims[1]!,
    n_ctx: meta<number>(f, `${a}.context_length`, where),
    n_layer: meta<number>(f, `${a}.block_count`, where),
    n_embd: meta<number>(f, `${a}.embedding_length`, where),
    n_head: meta<number>(f, `${a}.attention.head_count`, where),
    n_kv_head: a === 'llama' ? meta<number>(f, 'llama.attention.head_count_kv', where) : undefined,
    n_inner: meta<number>(f, `${a}.feed_forward_length`, where),
    norm_eps: meta<number>(f, a === 'llama' ? 'llama.attention.layer_norm_rms_epsilon' : 'gpt2.attention.layer_norm_epsilon', where),
    rope_theta: a === 'llama' && f.metadata['llama.rope.freq_base'] ? meta<number>(f, 'llama.rope.freq_base', where) : 10000,
    tie_embeddings: !byName.has('output.weight'),
    bias: a === 'gpt2' || byName.has('blk.0.attn_q.bias'),
  });
  const shapes = paramShapes(config);
  const used = new Set<string>();
  const take = (name: string, dims: number[]): Float32Array => {
    const t = byName.get(name);
    if (!t) throw new Error(`${where}: missing tensor '${name}'`);
    if (t.dims.join(',') !== dims.join(',')) throw new Error(`${where}: tensor '${name}' has dims [${t.dims}] but the metadata implies [${dims}]`);
    used.add(name);
    return decodeTensor(t);
  };
  const params: Params = {};
  const put = (ours: string, values: Float32Array) => {
    const shape = shapes[ours]!;
    params[ours] = shape.length === 2 && /(_proj|lm_head)\.weight$/.test(ours)
      ? tf.tidy(() => tf.transpose(tf.tensor2d(values, [shape[1]!, shape[0]!]))) // file rows are [out, in]
      : tf.tensor(values, shape);
  };
  const d = config.n_embd;
  put('wte.weight', take('token_embd.weight', [d, config.vocab_size]));
  if (a === 'gpt2') put('wpe.weight', take('position_embd.weight', [d, config.n_ctx]));
  for (let i = 0; i < config.n_layer; i++) {
    const h = `h.${i}`, b = `blk.${i}`;
    const norm = (g: string, o: string) => {
      put(`${o}.weight`, take(`${b}.${g}.weight`, [d]));
      if (a === 'gpt2') put(`${o}.bias`, take(`${b}.${g}.bias`, [d]));
    };
    const lin = (g: string, o: string, heads?: number) => {
      const [inn, out] = shapes[`${o}.weight`]!;
      const w = take(`${b}.${g}.weight`, [inn!, out!]);
      put(`${o}.weight`, heads ? fromInterleaved(w, heads, inn!) : w);
      if (config.bias) {
        const bias = take(`${b}.${g}.bias`, [out!]);
        put(`${o}.bias`, heads ? fromInterleaved(bias, heads, 1) : bias);
      }
    };
    norm('attn_norm', `${h}.ln_1`);
    if (a === 'llama') {
      lin('attn_q', `${h}.attn.q_proj`, config.n_head);
      lin('attn_k', `${h}.attn.k_proj`, config.n_kv_head);
      lin('attn_v', `${h}.attn.v_proj`);
    } else {
      const w = take(`${b}.attn_qkv.weight`, [d, 3 * d]), bias = take(`${b}.attn_qkv.bias`, [3 * d]);
      ['q_proj', 'k_proj', 'v_proj'].forEach((p, k) => {
        put(`${h}.attn.${p}.weight`, w.slice(k * d * d, (k + 1) * d * d));
        put(`${h}.attn.${p}.bias`, bias.slice(k * d, (k + 1) * d));
      });
    }
    lin('attn_output', `${h}.attn.o_proj`);
    norm('ffn_norm', `${h}.ln_2`);
    if (a === 'llama') lin('ffn_gate', `${h}.mlp.gate_proj`);
    lin('ffn_up', `${h}.mlp.up_proj`);
    lin('ffn_down', `${h}.mlp.down_proj`);
  }
  put('ln_f.weight', take('output_norm.weight', [d]));
  if (a === 'gpt2') put('ln_f.bias', take('output_norm.bias', [d]));
  if (!config.tie_embeddings) put('lm_head.weight', take('output.weight', [d, config.vocab_size]));
  const extra = f.tensors.filter((t) => !used.has(t.name) && t.name !== 'rope_freqs.weight');
  if (extra.length) {
    for (const t of Object.values(params)) t.dispose();
    throw new Error(`${where}: unexpected tensor '${extra[0]!.name}' for a ${a} model`);
  }
  return { config, params, tokenizer: tokenizerFromGguf(f, where, config.vocab_size) };
}

function tokenizerFromGguf(f: GgufFile, where: string, vocabSize: number): Tokenizer {
  const model = meta<string>(f, 'tokenizer.ggml.model', where);
  const tokens = f.metadata['tokenizer.ggml.tokens']!.value as string[];
  const types = (f.metadata['tokenizer.ggml.token_type']?.value as number[] | undefined) ?? [];
  if (model === 'llama') {
    // Rebuild llama2.c's tok.bin (score, length, bytes per token) and let its reader make the tokenizer.
    const scores = (f.metadata['tokenizer.ggml.scores']?.value as number[] | undefined) ?? Array(tokens.length).fill(0);
    if (tokens[0] !== '<unk>' || tokens[1] !== '<s>' || tokens[2] !== '</s>') throw new Error(`${where}: sentencepiece vocab must start <unk>, <s>, </s> (got ${tokens.slice(0, 3).join(', ')})`);
    const pieces = tokens.map((t) => Buffer.from(t.replaceAll('▁', ' '), 'utf8'));
    const buf = Buffer.alloc(4 + pieces.reduce((n, p) => n + 8 + p.length, 0));
    buf.writeInt32LE(Math.max(...pieces.map((p) => p.length)), 0);
    let o = 4;
    pieces.forEach((p, i) => {
      buf.writeFloatLE(scores[i]!, o);
      buf.writeInt32LE(p.length, o + 4);
      p.copy(buf, o + 8);
      o += 8 + p.length;
    });
    return Tokenizer.fromLlama2c(buf, vocabSize);
  }
  if (model === 'gpt2') {
    const merges = (f.metadata['tokenizer.ggml.merges']?.value as string[] | undefined) ?? [];
    const id = (k: string) => f.metadata[k]?.value as number | undefined;
    const vocab: Record<string, number> = {};
    const added: object[] = [];
    tokens.forEach((t, i) => {
      if (types[i] === 3 || types[i] === 4) added.push({ id: i, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: types[i] === 3 });
      else vocab[t] = i;
    });
    const name = (i: number | undefined) => (i === undefined ? null : tokens[i]);
    const chat = f.metadata['tokenizer.chat_template']?.value as string | undefined;
    return Tokenizer.fromJSON(
      {
        version: '1.0', added_tokens: added, normalizer: null,
        pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
        post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
        model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges },
      },
      { bos_token: name(id('tokenizer.ggml.bos_token_id')), eos_token: name(id('tokenizer.ggml.eos_token_id')), pad_token: name(id('tokenizer.ggml.padding_token_id')), ...(chat ? { chat_template: chat } : {}) },
    );
  }
  throw new Error(`${where}: tokenizer model '${model}' is not supported (llama, gpt2)`);
}
