/**
 * The one home of the model ↔ file mapping. In memory the model keeps nanoGPT-style names and [in, out]
 * linear weights (src/model/gpt.ts); on disk a checkpoint is what Hugging Face `transformers` loads as it is:
 *
 *   llama family → LlamaForCausalLM       gpt2 family → GPT2LMHeadModel
 *   wte.weight            model.embed_tokens.weight              transformer.wte.weight
 *   wpe.weight            —                                      transformer.wpe.weight
 *   h.i.ln_1              model.layers.i.input_layernorm         transformer.h.i.ln_1
 *   h.i.attn.q/k/v_proj   model.layers.i.self_attn.q/k/v_proj    transformer.h.i.attn.c_attn (fused q|k|v)
 *   h.i.attn.o_proj       model.layers.i.self_attn.o_proj        transformer.h.i.attn.c_proj
 *   h.i.ln_2              model.layers.i.post_attention_layernorm transformer.h.i.ln_2
 *   h.i.mlp.gate_proj     model.layers.i.mlp.gate_proj           —
 *   h.i.mlp.up_proj       model.layers.i.mlp.up_proj             transformer.h.i.mlp.c_fc
 *   h.i.mlp.down_proj     model.layers.i.mlp.down_proj           transformer.h.i.mlp.c_proj
 *   ln_f                  model.norm                             transformer.ln_f
 *   lm_head.weight        lm_head.weight (only when untied)      lm_head.weight (only when untied)
 *
 * Orientation: Llama linears are torch.nn.Linear, [out, in] (transposed from memory); GPT-2's are Conv1D,
 * [in, out] (as in memory); both lm_heads are nn.Linear [vocab, d].
 * Options GPT-2 cannot express are written so GPT2LMHeadModel computes the same function, and read back
 * exactly thanks to the project fields in config.json:
 *   bias: false           → zero biases on every linear (GPT-2 always has them); dropped again on read.
 *   n_kv_head < n_head    → c_attn's k and v columns repeated per query head (plain multi-head attention
 *                            with the same scores); folded back to the kv heads on read.
 * Llama's options map directly: bias → attention_bias + mlp_bias, tie_embeddings → tie_word_embeddings,
 * n_kv_head → num_key_value_heads, rope_theta, norm_eps → rms_norm_eps. RoPE needs no permutation:
 * gpt.ts already uses HF's rotate-half layout (the llama2.c importer permutes wq/wk to get there).
 *
 * Reading also accepts the legacy layout written before this mapping (our names, linears [out, in]).
 */
import type { ModelConfig } from '../model/gpt.js';
import { paramShapes, resolveModelConfig } from '../model/gpt.js';
import { type TensorData, toFloat32 } from './safetensors.js';

/** A float tensor on the host: what the mapping moves around (no tfjs here). */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

export type HfArchitecture = 'LlamaForCausalLM' | 'GPT2LMHeadModel';

export function hfArchitecture(c: ModelConfig): HfArchitecture {
  return c.arch === 'llama' ? 'LlamaForCausalLM' : 'GPT2LMHeadModel';
}

// ------------------------------------------------------------------------------------------ config.json

export interface SpecialTokenIds {
  bos?: number | undefined;
  eos: number;
  pad: number;
}

/** The project's own config fields, written beside HF's (and read first when present). */
const PROJECT_FIELDS = ['arch', 'vocab_size', 'n_ctx', 'n_layer', 'n_embd', 'n_head', 'n_kv_head', 'n_inner', 'norm_eps', 'rope_theta', 'tie_embeddings', 'bias', 'dropout'] as const;

/** config.json: every field AutoConfig reads for the architecture, plus the project's fields beside them. */
export function hfConfig(c: ModelConfig, ids: SpecialTokenIds): Record<string, unknown> {
  const own: Record<string, unknown> = {};
  for (const k of PROJECT_FIELDS) own[k] = c[k];
  // GPT-2 convention: with no BOS token, generation starts from the EOS token (<|endoftext|>).
  const special = { bos_token_id: ids.bos ?? ids.eos, eos_token_id: ids.eos, pad_token_id: ids.pad };
  if (c.arch === 'llama') {
    return {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      vocab_size: c.vocab_size,
      hidden_size: c.n_embd,
      intermediate_size: c.n_inner,
      num_hidden_layers: c.n_layer,
      num_attention_heads: c.n_head,
      num_key_value_heads: c.n_kv_head,
      head_dim: c.n_embd / c.n_head,
      hidden_act: 'silu',
      max_position_embeddings: c.n_ctx,
      rms_norm_eps: c.norm_eps,
      rope_theta: c.rope_theta,
      rope_scaling: null,
      attention_bias: c.bias,
      attention_dropout: c.dropout,
      mlp_bias: c.bias,
      pretraining_tp: 1,
      initializer_range: 0.02,
      use_cache: true,
      tie_word_embeddings: c.tie_embeddings,
      ...special,
      torch_dtype: 'float32',
      llmctl: 'project fields: arch, vocab_size, n_ctx, n_layer, n_embd, n_head, n_kv_head, n_inner, norm_eps, rope_theta, tie_embeddings, bias, dropout',
      ...own,
    };
  }
  // GPT-2's own keys share our names (n_embd, n_layer, n_head, n_inner, n_ctx, vocab_size).
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: c.vocab_size,
    n_positions: c.n_ctx,
    n_ctx: c.n_ctx,
    n_embd: c.n_embd,
    n_layer: c.n_layer,
    n_head: c.n_head,
    n_inner: c.n_inner,
    activation_function: 'gelu_new',
    layer_norm_epsilon: c.norm_eps,
    resid_pdrop: c.dropout,
    embd_pdrop: c.dropout,
    attn_pdrop: c.dropout,
    initializer_range: 0.02,
    scale_attn_weights: true,
    scale_attn_by_inverse_layer_idx: false,
    reorder_and_upcast_attn: false,
    use_cache: true,
    tie_word_embeddings: c.tie_embeddings,
    ...special,
    torch_dtype: 'float32',
    llmctl: 'project fields: arch, n_kv_head (GQA, written as repeated k/v heads), bias (false: written as zero biases), tie_embeddings, norm_eps, rope_theta, dropout',
    ...own,
  };
}

/**
 * ModelConfig from a config.json: the project's fields when present (files written by llmctl), otherwise
 * Hugging Face's for a supported architecture. Unsupported options throw `path: field: reason`.
 */
export function modelConfigFromJson(raw: Record<string, unknown>, path: string): ModelConfig {
  if (typeof raw.n_embd === 'number' && typeof raw.n_layer === 'number' && typeof raw.n_head === 'number' && typeof raw.n_ctx === 'number' && typeof raw.vocab_size === 'number' && (raw.arch === 'llama' || raw.arch === 'gpt2')) {
    return resolveModelConfig(raw as unknown as ModelConfig);
  }
  if (raw.model_type === undefined && raw.arch !== undefined) {
    for (const k of ['vocab_size', 'n_ctx', 'n_layer', 'n_embd', 'n_head'] as const) {
      if (typeof raw[k] !== 'number') throw new Error(`${path}: ${k}: missing or not a number`);
    }
  }
  return configFromHf(raw, path);
}

const LLAMA_TYPES = new Set(['llama', 'mistral', 'qwen2']);

function configFromHf(raw: Record<string, unknown>, path: string): ModelConfig {
  const fail = (field: string, why: string): never => {
    throw new Error(`${path}: ${field}: ${why}`);
  };
  const num = (field: string, dflt?: number): number => {
    const v = raw[field] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) return fail(field, v === undefined ? 'missing' : `expected a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const type = raw.model_type;
  if (typeof type !== 'string') {
    for (const k of ['vocab_size', 'n_ctx', 'n_layer', 'n_embd', 'n_head'] as const) if (typeof raw[k] !== 'number') fail(k, 'missing or not a number');
    return fail('model_type', 'missing');
  }
  if (type === 'gpt2') {
    const act = raw.activation_function ?? 'gelu_new';
    if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') fail('activation_function', `${JSON.stringify(act)} is not supported (only GPT-2's tanh GELU, "gelu_new")`);
    if (raw.scale_attn_weights === false) fail('scale_attn_weights', 'false is not supported');
    if (raw.scale_attn_by_inverse_layer_idx === true) fail('scale_attn_by_inverse_layer_idx', 'true is not supported');
    if (raw.add_cross_attention === true) fail('add_cross_attention', 'true is not supported (decoder-only models only)');
    const d = num('n_embd');
    return resolveModelConfig({
      arch: 'gpt2',
      vocab_size: num('vocab_size'),
      n_ctx: num('n_positions', typeof raw.n_ctx === 'number' ? raw.n_ctx : undefined),
      n_layer: num('n_layer'),
      n_embd: d,
      n_head: num('n_head'),
      n_inner: typeof raw.n_inner === 'number' ? raw.n_inner : 4 * d,
      norm_eps: num('layer_norm_epsilon', 1e-5),
      tie_embeddings: raw.tie_word_embeddings !== false,
      bias: true,
      dropout: 0,
    });
  }
  if (!LLAMA_TYPES.has(type)) fail('model_type', `${JSON.stringify(type)} is not supported (supported: llama, mistral, qwen2 — Llama family — and gpt2)`);
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu') fail('hidden_act', `${JSON.stringify(act)} is not supported (SwiGLU with silu only)`);
  if (raw.rope_scaling !== undefined && raw.rope_scaling !== null) fail('rope_scaling', `${JSON.stringify(raw.rope_scaling)} is not supported (plain RoPE only)`);
  const ctx = num('max_position_embeddings');
  const window = raw.sliding_window;
  const windowOn = type === 'qwen2' ? raw.use_sliding_window === true : true;
  if (windowOn && typeof window === 'number' && window < ctx) fail('sliding_window', `${window} < max_position_embeddings ${ctx}: sliding-window attention is not supported`);
  const d = num('hidden_size'), heads = num('num_attention_heads');
  if (raw.head_dim !== undefined && raw.head_dim !== null && raw.head_dim !== d / heads) fail('head_dim', `${String(raw.head_dim)} != hidden_size / num_attention_heads = ${d / heads} is not supported`);
  // Qwen2 has biases on q, k, v only: expressed as bias everywhere with zeros on the others (see fromHf).
  const attnBias = type === 'qwen2' ? true : raw.attention_bias === true;
  const mlpBias = raw.mlp_bias === true;
  return resolveModelConfig({
    arch: 'llama',
    vocab_size: num('vocab_size'),
    n_ctx: ctx,
    n_layer: num('num_hidden_layers'),
    n_embd: d,
    n_head: heads,
    n_kv_head: num('num_key_value_heads', heads),
    n_inner: num('intermediate_size'),
    norm_eps: num('rms_norm_eps', 1e-6),
    rope_theta: num('rope_theta', 10000),
    tie_embeddings: raw.tie_word_embeddings === true,
    bias: attnBias || mlpBias,
    dropout: 0,
  });
}

// ------------------------------------------------------------------------------------------ tensors

const LEGACY_NAME = /^h\.\d+\.(attn\.[qkvo]|mlp\.(gate|up|down))_proj\.(weight|bias)$/;

/** True for files written before the HF mapping (our names, linears [out, in]). */
export function isLegacyLayout(names: readonly string[]): boolean {
  return names.some((n) => LEGACY_NAME.test(n));
}

/** Linear weights in the legacy layout are stored transposed ([out, in]), like torch.nn.Linear. */
export function isLegacyLinearWeight(name: string): boolean {
  return /(_proj|lm_head)\.weight$/.test(name);
}

function transpose2d(t: HostTensor): HostTensor {
  const [r, c] = t.shape as [number, number];
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j]!;
  return { shape: [c, r], data: out };
}

/** Concatenate [rows, ci] matrices along columns. */
function concatCols(parts: HostTensor[]): HostTensor {
  const rows = parts[0]!.shape[0]!;
  const cols = parts.reduce((n, p) => n + p.shape[1]!, 0);
  const out = new Float32Array(rows * cols);
  let c0 = 0;
  for (const p of parts) {
    const c = p.shape[1]!;
    for (let i = 0; i < rows; i++) out.set(p.data.subarray(i * c, (i + 1) * c), i * cols + c0);
    c0 += c;
  }
  return { shape: [rows, cols], data: out };
}

/** Columns [c0, c0 + n) of a [rows, cols] matrix (or elements of a vector). */
function sliceCols(t: HostTensor, c0: number, n: number): HostTensor {
  if (t.shape.length === 1) return { shape: [n], data: t.data.slice(c0, c0 + n) };
  const [rows, cols] = t.shape as [number, number];
  const out = new Float32Array(rows * n);
  for (let i = 0; i < rows; i++) out.set(t.data.subarray(i * cols + c0, i * cols + c0 + n), i * n);
  return { shape: [rows, n], data: out };
}

/** GQA → MHA: kv head j's hd columns repeated for query heads j·rep … j·rep + rep − 1 (columns are the out dim). */
export function repeatKvHeads(t: HostTensor, nKv: number, nHead: number, hd: number): HostTensor {
  const rep = nHead / nKv;
  if (rep === 1) return t;
  const parts: HostTensor[] = [];
  for (let h = 0; h < nHead; h++) parts.push(sliceCols(t, Math.floor(h / rep) * hd, hd));
  return t.shape.length === 1 ? { shape: [nHead * hd], data: Float32Array.from(parts.flatMap((p) => Array.from(p.data))) } : concatCols(parts);
}

/** MHA → GQA: keep the first query head of each group; the others must be copies. */
function foldKvHeads(t: HostTensor, nKv: number, nHead: number, hd: number, name: string): HostTensor {
  const rep = nHead / nKv;
  if (rep === 1) return t;
  const parts: HostTensor[] = [];
  for (let j = 0; j < nKv; j++) {
    const first = sliceCols(t, j * rep * hd, hd);
    for (let r = 1; r < rep; r++) {
      const other = sliceCols(t, (j * rep + r) * hd, hd);
      if (other.data.some((v, i) => v !== first.data[i])) throw new Error(`${name}: k/v heads of query heads ${j * rep} and ${j * rep + r} differ, but config n_kv_head ${nKv} says they are shared`);
    }
    parts.push(first);
  }
  return t.shape.length === 1 ? { shape: [nKv * hd], data: Float32Array.from(parts.flatMap((p) => Array.from(p.data))) } : concatCols(parts);
}

/** In-memory module name (h.0.attn.q_proj) → HF module name, for Llama; GPT-2 q/k/v have no own module. */
export function hfModuleName(c: ModelConfig, module: string): string {
  if (module === 'lm_head') return 'lm_head';
  if (module === 'wte') return c.arch === 'llama' ? 'model.embed_tokens' : 'transformer.wte';
  if (module === 'wpe') return 'transformer.wpe';
  if (module === 'ln_f') return c.arch === 'llama' ? 'model.norm' : 'transformer.ln_f';
  const m = /^h\.(\d+)\.(.+)$/.exec(module);
  if (!m) throw new Error(`no Hugging Face name for '${module}'`);
  const [, i, rest] = m;
  const llama: Record<string, string> = {
    ln_1: 'input_layernorm', ln_2: 'post_attention_layernorm',
    'attn.q_proj': 'self_attn.q_proj', 'attn.k_proj': 'self_attn.k_proj', 'attn.v_proj': 'self_attn.v_proj', 'attn.o_proj': 'self_attn.o_proj',
    'mlp.gate_proj': 'mlp.gate_proj', 'mlp.up_proj': 'mlp.up_proj', 'mlp.down_proj': 'mlp.down_proj',
  };
  const gpt2: Record<string, string> = {
    ln_1: 'ln_1', ln_2: 'ln_2', 'attn.q_proj': 'attn.c_attn', 'attn.k_proj': 'attn.c_attn', 'attn.v_proj': 'attn.c_attn',
    'attn.o_proj': 'attn.c_proj', 'mlp.up_proj': 'mlp.c_fc', 'mlp.down_proj': 'mlp.c_proj',
  };
  const name = (c.arch === 'llama' ? llama : gpt2)[rest!];
  if (!name) throw new Error(`no Hugging Face name for '${module}' in a ${c.arch} model`);
  return c.arch === 'llama' ? `model.layers.${i}.${name}` : `transformer.h.${i}.${name}`;
}

/** In-memory params (host copies, [in, out] linears) → the tensors of an HF model.safetensors. */
export function toHfTensors(c: ModelConfig, params: Record<string, HostTensor>): Record<string, HostTensor> {
  const get = (n: string): HostTensor => {
    const t = params[n];
    if (!t) throw new Error(`missing parameter '${n}'`);
    return t;
  };
  const out: Record<string, HostTensor> = {};
  const hd = c.n_embd / c.n_head;
  for (const name of Object.keys(paramShapes(c))) {
    const dot = name.lastIndexOf('.');
    const module = name.slice(0, dot), kind = name.slice(dot + 1);
    const t = get(name);
    if (c.arch === 'llama') {
      const linear = /_proj$|^lm_head$/.test(module) && kind === 'weight';
      out[`${hfModuleName(c, module)}.${kind}`] = linear ? transpose2d(t) : t;
      continue;
    }
    if (/attn\.[qkv]_proj$/.test(module)) continue; // fused below
    if (module === 'lm_head') out['lm_head.weight'] = transpose2d(t);
    else out[`${hfModuleName(c, module)}.${kind}`] = t;
  }
  if (c.arch === 'gpt2') {
    for (let i = 0; i < c.n_layer; i++) {
      const p = `h.${i}.attn`;
      const kv = (n: string) => repeatKvHeads(get(n), c.n_kv_head, c.n_head, hd);
      out[`transformer.h.${i}.attn.c_attn.weight`] = concatCols([get(`${p}.q_proj.weight`), kv(`${p}.k_proj.weight`), kv(`${p}.v_proj.weight`)]);
      if (c.bias) {
        const b = concatCols([get(`${p}.q_proj.bias`), kv(`${p}.k_proj.bias`), kv(`${p}.v_proj.bias`)].map((v) => ({ shape: [1, v.shape[0]!], data: v.data })));
        out[`transformer.h.${i}.attn.c_attn.bias`] = { shape: [b.shape[1]!], data: b.data };
      } else {
        // GPT-2 always has biases: zeros compute the same function.
        out[`transformer.h.${i}.attn.c_attn.bias`] = { shape: [3 * c.n_embd], data: new Float32Array(3 * c.n_embd) };
        out[`transformer.h.${i}.attn.c_proj.bias`] = { shape: [c.n_embd], data: new Float32Array(c.n_embd) };
        out[`transformer.h.${i}.mlp.c_fc.bias`] = { shape: [c.n_inner], data: new Float32Array(c.n_inner) };
        out[`transformer.h.${i}.mlp.c_proj.bias`] = { shape: [c.n_embd], data: new Float32Array(c.n_embd) };
      }
    }
  }
  return out;
}

/**
 * The tensors of a model file (HF layout or legacy) → in-memory params. Checks that every tensor the
 * config implies is there with its shape, and that nothing unknown is left over.
 */
export function fromFileTensors(c: ModelConfig, file: Record<string, TensorData>, path: string): Record<string, HostTensor> {
  const names = Object.keys(file);
  const host = (n: string): HostTensor => ({ shape: file[n]!.shape.slice(), data: toFloat32(file[n]!) });
  const expected = paramShapes(c);
  const out: Record<string, HostTensor> = {};
  const used = new Set<string>();
  const take = (n: string, what = n): HostTensor => {
    if (!(n in file)) throw new Error(`${path}: missing tensor '${n}'${what !== n ? ` (for ${what})` : ''}`);
    used.add(n);
    return host(n);
  };
  /** t is in memory orientation; `transposed` says the file holds it the other way round (for the message). */
  const check = (name: string, t: HostTensor, fileName: string, transposed = false) => {
    const want = expected[name]!;
    if (t.shape.join(',') !== want.join(',')) {
      const flip = (s: number[]) => (transposed ? [...s].reverse() : s);
      throw new Error(`${path}: '${fileName}' has shape [${flip(t.shape)}] but config.json implies [${flip(want)}]`);
    }
    out[name] = t;
  };

  if (isLegacyLayout(names)) {
    for (const name of Object.keys(expected)) {
      const t = take(name);
      const lin = isLegacyLinearWeight(name) && t.shape.length === 2;
      check(name, lin ? transpose2d(t) : t, name, lin);
    }
    // Legacy files name tensors as in memory: report a leftover as unexpected below.
  } else if (c.arch === 'llama') {
    for (const name of Object.keys(expected)) {
      const dot = name.lastIndexOf('.');
      const module = name.slice(0, dot), kind = name.slice(dot + 1);
      const fileName = `${hfModuleName(c, module)}.${kind}`;
      const linear = /_proj$|^lm_head$/.test(module) && kind === 'weight';
      if (kind === 'bias' && !(fileName in file)) {
        // bias: true covers all linears; Qwen2-style files carry q/k/v biases only — the rest are zero.
        out[name] = { shape: expected[name]!, data: new Float32Array(expected[name]![0]!) };
        continue;
      }
      const t = take(fileName, name);
      if (linear && t.shape.length !== 2) throw new Error(`${path}: '${fileName}' has shape [${t.shape}], expected a matrix`);
      check(name, linear ? transpose2d(t) : t, fileName, linear);
    }
    if (c.tie_embeddings && 'lm_head.weight' in file) used.add('lm_head.weight'); // tied copy, ignored
  } else {
    const prefix = names.some((n) => n.startsWith('transformer.')) ? 'transformer.' : ''; // OpenAI's gpt2 files have none
    const f = (n: string) => prefix + n.replace(/^transformer\./, '');
    const hd = c.n_embd / c.n_head;
    for (const name of Object.keys(expected)) {
      const dot = name.lastIndexOf('.');
      const module = name.slice(0, dot), kind = name.slice(dot + 1);
      if (/attn\.[qkv]_proj$/.test(module) || module === 'lm_head') continue;
      const fileName = f(`${hfModuleName(c, module)}.${kind}`);
      check(name, take(fileName, name), fileName);
    }
    for (let i = 0; i < c.n_layer; i++) {
      const w = take(f(`transformer.h.${i}.attn.c_attn.weight`));
      const b = take(f(`transformer.h.${i}.attn.c_attn.bias`));
      const d = c.n_embd;
      if (w.shape.join(',') !== `${d},${3 * d}`) throw new Error(`${path}: '${f(`transformer.h.${i}.attn.c_attn.weight`)}' has shape [${w.shape}] but config.json implies [${d},${3 * d}] (Conv1D [in, out], q|k|v)`);
      const p = `h.${i}.attn`;
      const fold = (t: HostTensor, what: string) => foldKvHeads(t, c.n_kv_head, c.n_head, hd, `${path}: ${what}`);
      check(`${p}.q_proj.weight`, sliceCols(w, 0, d), 'c_attn.weight');
      check(`${p}.k_proj.weight`, fold(sliceCols(w, d, d), `h.${i}.attn.c_attn.weight`), 'c_attn.weight');
      check(`${p}.v_proj.weight`, fold(sliceCols(w, 2 * d, d), `h.${i}.attn.c_attn.weight`), 'c_attn.weight');
      if (c.bias) {
        check(`${p}.q_proj.bias`, sliceCols(b, 0, d), 'c_attn.bias');
        check(`${p}.k_proj.bias`, fold(sliceCols(b, d, d), `h.${i}.attn.c_attn.bias`), 'c_attn.bias');
        check(`${p}.v_proj.bias`, fold(sliceCols(b, 2 * d, d), `h.${i}.attn.c_attn.bias`), 'c_attn.bias');
      } else {
        // bias: false was written as zero biases: they must still be zero.
        for (const n of [`transformer.h.${i}.attn.c_attn.bias`, `transformer.h.${i}.attn.c_proj.bias`, `transformer.h.${i}.mlp.c_fc.bias`, `transformer.h.${i}.mlp.c_proj.bias`]) {
          const t = take(f(n));
          if (t.data.some((v) => v !== 0)) throw new Error(`${path}: '${f(n)}' is not zero but config.json says bias: false`);
        }
      }
    }
    if (!c.tie_embeddings) {
      const t = take('lm_head.weight');
      if (t.shape.length !== 2) throw new Error(`${path}: 'lm_head.weight' has shape [${t.shape}], expected a matrix`);
      check('lm_head.weight', transpose2d(t), 'lm_head.weight', true);
    } else if ('lm_head.weight' in file) used.add('lm_head.weight');
    // GPT-2's causal-mask buffers (attn.bias / attn.masked_bias) are not weights.
    for (const n of names) if (/\.attn\.(masked_)?bias$/.test(n)) used.add(n);
  }
  for (const n of names) {
    if (!used.has(n)) throw new Error(`${path}: unexpected tensor '${n}' for this config`);
  }
  return out;
}

// ------------------------------------------------------------------------------------------ PEFT adapters

/**
 * LoRA adapters as PEFT saves them for the HF model: `base_model.model.<HF module>.lora_A.weight` [r, in]
 * and `.lora_B.weight` [out, r]. In memory an adapter is `<module>.lora_A` [in, r] + `<module>.lora_B` [r, out].
 * GPT-2's q, k, v are one Conv1D (c_attn), so their adapters are written as one: A = [A_q; A_k; A_v] and a
 * block-diagonal B (rank 3r, alpha 3α through rank_pattern / alpha_pattern: the same α/r scale); a projection
 * that is not targeted has zero blocks. target_modules become suffixes PEFT matches ("attn.c_attn", …).
 */
export const PEFT_PREFIX = 'base_model.model.';
const FUSED = ['q_proj', 'k_proj', 'v_proj'] as const;

export interface PeftLayout {
  tensors: Record<string, HostTensor>;
  target_modules: string[];
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  fan_in_fan_out: boolean;
  /** Whole modules trained beside the adapter (the embedding after setup_chat_format): PEFT's modules_to_save. */
  modules_to_save: string[] | null;
}

const zeros = (shape: number[]): HostTensor => ({ shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });

/** Stack [rows_i, cols] matrices along rows. */
function concatRows(parts: HostTensor[]): HostTensor {
  const cols = parts[0]!.shape[1]!;
  const rowsN = parts.reduce((n, p) => n + p.shape[0]!, 0);
  const out = new Float32Array(rowsN * cols);
  let at = 0;
  for (const p of parts) {
    out.set(p.data, at);
    at += p.data.length;
  }
  return { shape: [rowsN, cols], data: out };
}

/** Rows [r0, r0 + n) of a matrix. */
function sliceRows(t: HostTensor, r0: number, n: number): HostTensor {
  const c = t.shape[1]!;
  return { shape: [n, c], data: t.data.slice(r0 * c, (r0 + n) * c) };
}

/** In-memory adapter → PEFT tensors and the adapter_config fields that depend on the architecture. */
export function toPeft(c: ModelConfig, lora: Record<string, HostTensor>, r: number, alpha: number): PeftLayout {
  const tensors: Record<string, HostTensor> = {};
  const modules = [...new Set(Object.keys(lora).filter((k) => /\.lora_[AB]$/.test(k)).map((k) => k.replace(/\.lora_[AB]$/, '')))];
  const targets = new Set<string>();
  const saved: string[] = [];
  for (const name of Object.keys(lora).filter((k) => !/\.lora_[AB]$/.test(k))) {
    // A whole tensor (wte.weight, lm_head.weight): PEFT stores modules_to_save under the module's own key.
    const module = name.replace(/\.weight$/, '');
    const hf = hfModuleName(c, module);
    tensors[`${PEFT_PREFIX}${hf}.weight`] = module === 'lm_head' ? transpose2d(lora[name]!) : lora[name]!;
    saved.push(hf.split('.').pop()!);
  }
  const hd = c.n_embd / c.n_head;
  const fusedLayers = new Set<number>();
  for (const m of modules) {
    const A = lora[`${m}.lora_A`], B = lora[`${m}.lora_B`];
    if (!A || !B) throw new Error(`adapter '${m}' lacks lora_A or lora_B`);
    const fused = c.arch === 'gpt2' && /^h\.\d+\.attn\.[qkv]_proj$/.test(m);
    if (fused) {
      fusedLayers.add(Number(m.split('.')[1]));
      continue;
    }
    const hf = hfModuleName(c, m);
    tensors[`${PEFT_PREFIX}${hf}.lora_A.weight`] = transpose2d(A);
    tensors[`${PEFT_PREFIX}${hf}.lora_B.weight`] = transpose2d(B);
    targets.add(c.arch === 'llama' ? hf.split('.').pop()! : hf.split('.').slice(-2).join('.'));
  }
  const rank_pattern: Record<string, number> = {}, alpha_pattern: Record<string, number> = {};
  for (const i of fusedLayers) {
    const d = c.n_embd;
    const blocks = FUSED.map((p) => {
      const A = lora[`h.${i}.attn.${p}.lora_A`], B = lora[`h.${i}.attn.${p}.lora_B`];
      if (!A || !B) return undefined;
      return { A: transpose2d(A), B: transpose2d(p === 'q_proj' ? B : repeatKvHeads(B, c.n_kv_head, c.n_head, hd)) }; // [r, in], [d, r]
    });
    const rb = blocks.find((b) => b)!.A.shape[0]!;
    const nin = blocks.find((b) => b)!.A.shape[1]!;
    const A = concatRows(blocks.map((b) => b?.A ?? zeros([rb, nin])));
    const B = zeros([3 * d, 3 * rb]);
    blocks.forEach((b, j) => {
      if (!b) return;
      for (let row = 0; row < d; row++) B.data.set(b.B.data.subarray(row * rb, (row + 1) * rb), (j * d + row) * 3 * rb + j * rb);
    });
    tensors[`${PEFT_PREFIX}transformer.h.${i}.attn.c_attn.lora_A.weight`] = A;
    tensors[`${PEFT_PREFIX}transformer.h.${i}.attn.c_attn.lora_B.weight`] = B;
    targets.add('attn.c_attn');
    rank_pattern['attn.c_attn'] = 3 * rb;
    alpha_pattern['attn.c_attn'] = (3 * rb * alpha) / r;
  }
  return { tensors, target_modules: [...targets].sort(), rank_pattern, alpha_pattern, fan_in_fan_out: c.arch === 'gpt2', modules_to_save: saved.length ? saved.sort() : null };
}

/** The per-module entry of a PEFT rank/alpha pattern that applies to an HF module name (suffix match, as PEFT). */
function patternValue(pattern: unknown, hfModule: string): number | undefined {
  if (typeof pattern !== 'object' || pattern === null) return undefined;
  for (const [k, v] of Object.entries(pattern as Record<string, unknown>)) {
    if (typeof v === 'number' && (hfModule === k || hfModule.endsWith(`.${k}`) || new RegExp(`(^|\\.)${k}$`).test(hfModule))) return v;
  }
  return undefined;
}

/**
 * PEFT adapter tensors (HF module names, or the legacy ones with our module names) → in-memory adapter at
 * the single scale alpha/r; a module whose pattern gives it another scale has the ratio folded into B.
 */
export function fromPeft(c: ModelConfig, file: Record<string, TensorData>, peft: { r: number; lora_alpha: number; rank_pattern?: unknown; alpha_pattern?: unknown }, path: string): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  const scale = peft.lora_alpha / peft.r;
  const byModule = new Map<string, { A?: HostTensor; B?: HostTensor }>();
  const whole = new Map<string, HostTensor>();
  for (const [key, t] of Object.entries(file)) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$/.exec(key);
    if (!m) {
      const w = /^base_model\.model\.(.+)\.weight$/.exec(key);
      if (!w) throw new Error(`${path}: unexpected tensor '${key}'`);
      whole.set(w[1]!, { shape: t.shape.slice(), data: toFloat32(t) });
      continue;
    }
    const e = byModule.get(m[1]!) ?? {};
    e[m[2] as 'A' | 'B'] = { shape: t.shape.slice(), data: toFloat32(t) };
    byModule.set(m[1]!, e);
  }
  // Which in-memory module does an HF module name stand for?
  const toMemory = new Map<string, string>();
  for (const name of Object.keys(paramShapes(c))) {
    if (!name.endsWith('.weight') || name.split('.').length < 2) continue;
    const mod = name.slice(0, -'.weight'.length);
    toMemory.set(mod, mod); // legacy adapters use our names
    try {
      const hf = hfModuleName(c, mod);
      if (!(c.arch === 'gpt2' && /attn\.[qkv]_proj$/.test(mod))) toMemory.set(hf, mod);
    } catch {
      /* no HF name (not adaptable) */
    }
  }
  const d = c.n_embd, hd = d / c.n_head;
  for (const [hf, { A, B }] of byModule) {
    if (!A || !B) throw new Error(`${path}: '${hf}' has lora_${A ? 'A' : 'B'} but no lora_${A ? 'B' : 'A'}`);
    if (A.shape.length !== 2 || B.shape.length !== 2 || A.shape[0] !== B.shape[1]) throw new Error(`${path}: '${hf}': lora_A [${A.shape}] and lora_B [${B.shape}] do not chain`);
    const rank = A.shape[0]!;
    const modScale = (patternValue(peft.alpha_pattern, hf) ?? peft.lora_alpha) / (patternValue(peft.rank_pattern, hf) ?? peft.r);
    const fix = (b: HostTensor): HostTensor => (modScale === scale ? b : { shape: b.shape, data: b.data.map((v) => (v * modScale) / scale) });
    const fusedLayer = c.arch === 'gpt2' ? /^(?:transformer\.)?h\.(\d+)\.attn\.c_attn$/.exec(hf) : null;
    if (fusedLayer) {
      const i = fusedLayer[1]!;
      if (B.shape[0] !== 3 * d) throw new Error(`${path}: '${hf}.lora_B' has ${B.shape[0]} rows, c_attn has ${3 * d}`);
      const blockDiagonal = rank % 3 === 0 && [0, 1, 2].every((j) => [0, 1, 2].every((k) => j === k || sliceCols(sliceRows(B, j * d, d), (k * rank) / 3, rank / 3).data.every((v) => v === 0)));
      FUSED.forEach((p, j) => {
        const rb = blockDiagonal ? rank / 3 : rank, c0 = blockDiagonal ? j * rb : 0;
        const a = blockDiagonal ? sliceRows(A, c0, rb) : A;
        const b = sliceCols(sliceRows(B, j * d, d), c0, rb); // [d, rb]
        if (blockDiagonal && a.data.every((v) => v === 0) && b.data.every((v) => v === 0)) return; // not targeted
        const bMem = transpose2d(fix(b)); // [rb, d]
        out[`h.${i}.attn.${p}.lora_A`] = transpose2d(a);
        out[`h.${i}.attn.${p}.lora_B`] = p === 'q_proj' ? bMem : foldKvHeads(bMem, c.n_kv_head, c.n_head, hd, `${path}: '${hf}.lora_B'`);
      });
      continue;
    }
    // (OpenAI-style GPT-2 module names have no `transformer.` prefix.)
    const mem = toMemory.get(hf) ?? (c.arch === 'gpt2' ? toMemory.get(`transformer.${hf}`) : undefined);
    if (!mem) throw new Error(`${path}: adapter targets '${hf}', which this ${c.arch} model does not have`);
    out[`${mem}.lora_A`] = transpose2d(A);
    out[`${mem}.lora_B`] = transpose2d(fix(B));
  }
  for (const [hf, t] of whole) {
    const mem = toMemory.get(hf) ?? (c.arch === 'gpt2' ? toMemory.get(`transformer.${hf}`) : undefined);
    if (mem !== 'wte' && mem !== 'lm_head') throw new Error(`${path}: whole-module tensor '${hf}.weight' is not supported (only the embedding and lm_head as modules_to_save)`);
    if (t.shape.length !== 2) throw new Error(`${path}: '${hf}.weight' has shape [${t.shape}], expected a matrix`);
    out[`${mem}.weight`] = mem === 'lm_head' ? transpose2d(t) : t;
  }
  return out;
}
