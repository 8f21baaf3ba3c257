/**
 * Import of llama2.c checkpoints (the legacy "version 0" .bin of karpathy/llama2.c, e.g. the tinyllamas
 * stories260K model) and their tok*.bin tokenizer into our parameter map.
 * llama2.c rotates adjacent pairs (2i, 2i+1) in RoPE; we use the "rotate half" layout of Hugging Face
 * Llama. Permuting the output rows of wq and wk within each head (evens first, then odds) makes the two
 * identical — the same permutation HF's convert_llama_weights_to_hf.py applies — and q·k is unchanged.
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { Tokenizer } from '../tokenizer/index.js';
import { type ModelConfig, type Params, resolveModelConfig } from './gpt.js';

export interface Llama2cModel {
  config: ModelConfig;
  params: Params;
  tokenizer: Tokenizer;
}

export function importLlama2c(modelPath: string, tokenizerPath: string): Llama2cModel {
  const buf = readFileSync(modelPath);
  if (buf.length < 28) throw new Error(`${modelPath}: too short for a llama2.c header (${buf.length} bytes)`);
  const header = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + 28));
  const [dim, hidden, nLayers, nHeads, nKvHeads, rawVocab, seqLen] = Array.from(header) as [number, number, number, number, number, number, number];
  const vocab = Math.abs(rawVocab);
  if (dim <= 0 || hidden <= 0 || nLayers <= 0 || nHeads <= 0 || nKvHeads <= 0 || seqLen <= 0 || dim % nHeads !== 0) {
    throw new Error(`${modelPath}: header [${Array.from(header)}] is not a llama2.c model (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)`);
  }
  const hd = dim / nHeads, kvDim = nKvHeads * hd;
  const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + 28, buf.byteOffset + buf.length));
  const expected = vocab * dim + nLayers * (2 * dim + 2 * dim * dim + 2 * kvDim * dim + 3 * hidden * dim) + dim + seqLen * hd + (rawVocab < 0 ? vocab * dim : 0);
  if (floats.length !== expected) {
    throw new Error(`${modelPath}: holds ${floats.length} floats after the header, the header implies ${expected}`);
  }
  let at = 0;
  const take = (n: number) => floats.subarray(at, (at += n));

  const config = resolveModelConfig({
    arch: 'llama', vocab_size: vocab, n_ctx: seqLen, n_layer: nLayers, n_embd: dim, n_head: nHeads, n_kv_head: nKvHeads,
    n_inner: hidden, norm_eps: 1e-5, rope_theta: 10000, tie_embeddings: rawVocab > 0, bias: false,
  });
  const params: Params = {};
  params['wte.weight'] = tf.tensor2d(take(vocab * dim), [vocab, dim]);
  const perLayer = (name: string, n: number, make: (data: Float32Array) => tf.Tensor) => {
    for (let l = 0; l < nLayers; l++) params[`h.${l}.${name}`] = make(take(n));
  };
  // llama2.c stores W as [out][in]; we keep [in, out].
  const linear = (out: number, inn: number, permuteHeads = 0) => (data: Float32Array) =>
    tf.tidy(() => tf.transpose(tf.tensor2d(permuteHeads ? permuteRope(data, out, inn, permuteHeads) : data, [out, inn])));
  perLayer('ln_1.weight', dim, (d) => tf.tensor1d(d));
  perLayer('attn.q_proj.weight', dim * dim, linear(dim, dim, nHeads));
  perLayer('attn.k_proj.weight', kvDim * dim, linear(kvDim, dim, nKvHeads));
  perLayer('attn.v_proj.weight', kvDim * dim, linear(kvDim, dim));
  perLayer('attn.o_proj.weight', dim * dim, linear(dim, dim));
  perLayer('ln_2.weight', dim, (d) => tf.tensor1d(d));
  perLayer('mlp.gate_proj.weight', hidden * dim, linear(hidden, dim)); // w1
  perLayer('mlp.down_proj.weight', dim * hidden, linear(dim, hidden)); // w2
  perLayer('mlp.up_proj.weight', hidden * dim, linear(hidden, dim)); // w3
  params['ln_f.weight'] = tf.tensor1d(take(dim));
  take(seqLen * hd); // the legacy RoPE tables: run.c recomputes them, so do we
  if (rawVocab < 0) params['lm_head.weight'] = linear(vocab, dim)(take(vocab * dim));

  const tokenizer = Tokenizer.fromLlama2c(readFileSync(tokenizerPath), vocab);
  return { config, params, tokenizer };
}

/** Reorder each head's output rows from interleaved pairs to halves: [0,2,4,…,1,3,5,…]. */
function permuteRope(w: Float32Array, out: number, inn: number, heads: number): Float32Array {
  const hd = out / heads, half = hd / 2;
  const res = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let p = 0; p < half; p++) {
      const even = (h * hd + 2 * p) * inn, odd = (h * hd + 2 * p + 1) * inn;
      res.set(w.subarray(even, even + inn), (h * hd + p) * inn);
      res.set(w.subarray(odd, odd + inn), (h * hd + half + p) * inn);
    }
  }
  return res;
}
