/**
 * Byte-level pre-tokenizers and normalizers of HF tokenizer.json files beyond GPT-2's plain ByteLevel:
 * Sequence[Split(Regex), ByteLevel(use_regex: false)] (Llama-3, Qwen2), Digits (SmolLM-style), NFC/NFKC
 * normalizers. Oniguruma patterns become JS regexes: `(?i:…)` groups (which Node 20 lacks) are spelled
 * out letter by letter; the rest of these patterns (\p{L}, \p{N}, \s, lookahead, {m,n}) means the same.
 */

/** GPT-2's pre-tokenization pattern (as tiktoken r50k_base and HF's ByteLevel use_regex). */
export const GPT2_SPLIT_REGEX_SOURCE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

export interface PreTokenizer {
  normalize(text: string): string;
  /** Pieces BPE runs on, each independently. */
  split(text: string): string[];
}

type Step = (pieces: string[]) => string[];

function asObj(x: unknown, what: string): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new Error(`${what}: expected an object`);
  return x as Record<string, unknown>;
}

/** `(?i:abc)` → `(?:[aA][bB][cC])`, outside character classes; other syntax is left alone. */
export function onigurumaToJs(pattern: string): string {
  let out = '';
  for (let i = 0; i < pattern.length; ) {
    if (pattern.startsWith('(?i:', i)) {
      let depth = 1, j = i + 4, body = '';
      while (j < pattern.length && depth > 0) {
        const ch = pattern[j]!;
        if (ch === '\\') {
          body += ch + (pattern[j + 1] ?? '');
          j += 2;
          continue;
        }
        if (ch === '[') throw new Error(`pattern ${JSON.stringify(pattern)}: a character class inside (?i:…) is not supported`);
        if (ch === '(') depth++;
        if (ch === ')' && --depth === 0) break;
        body += /[a-zA-Z]/.test(ch) ? `[${ch.toLowerCase()}${ch.toUpperCase()}]` : ch;
        j++;
      }
      out += `(?:${body})`;
      i = j + 1;
      continue;
    }
    if (pattern[i] === '\\') {
      out += pattern.slice(i, i + 2);
      i += 2;
      continue;
    }
    out += pattern[i]!;
    i++;
  }
  return out;
}

/** Split keeping matches and the text between them as pieces (HF behavior "Isolated"), or dropping matches ("Removed"). */
function splitBy(re: RegExp, behavior: string): Step {
  return (pieces) =>
    pieces.flatMap((p) => {
      const out: string[] = [];
      let last = 0;
      for (const m of p.matchAll(re)) {
        if (m[0].length === 0) continue;
        if (m.index > last) out.push(p.slice(last, m.index));
        if (behavior === 'Isolated') out.push(m[0]);
        last = m.index + m[0].length;
      }
      if (last < p.length) out.push(p.slice(last));
      return out;
    });
}

function step(pt: Record<string, unknown>): Step {
  switch (pt['type']) {
    case 'ByteLevel': {
      const prefix = pt['add_prefix_space'] === true;
      const regex = pt['use_regex'] !== false ? splitBy(new RegExp(GPT2_SPLIT_REGEX_SOURCE, 'gu'), 'Isolated') : (p: string[]) => p;
      return (pieces) => regex(prefix ? pieces.map((p) => (p.startsWith(' ') ? p : ' ' + p)) : pieces);
    }
    case 'Split': {
      const pat = asObj(pt['pattern'], 'Split.pattern');
      const behavior = String(pt['behavior'] ?? 'Isolated');
      if (behavior !== 'Isolated' && behavior !== 'Removed') throw new Error(`pre_tokenizer Split behavior ${behavior} is not supported (Isolated, Removed)`);
      if (pt['invert'] === true) throw new Error('pre_tokenizer Split invert: true is not supported');
      const src = typeof pat['Regex'] === 'string' ? onigurumaToJs(pat['Regex']) : String(pat['String']).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      return splitBy(new RegExp(src, 'gu'), behavior);
    }
    case 'Digits':
      return splitBy(pt['individual_digits'] === true ? /\p{Nd}/gu : /\p{Nd}+/gu, 'Isolated');
    case 'Sequence': {
      const steps = (Array.isArray(pt['pretokenizers']) ? pt['pretokenizers'] : []).map((x) => step(asObj(x, 'pre_tokenizer')));
      return (pieces) => steps.reduce((ps, s) => s(ps), pieces);
    }
    default:
      throw new Error(`pre_tokenizer ${String(pt['type'])} is not supported for byte-level BPE (ByteLevel, Split, Digits, Sequence)`);
  }
}

function normalizer(n: unknown): (s: string) => string {
  if (n === null || n === undefined) return (s) => s;
  const r = asObj(n, 'normalizer');
  switch (r['type']) {
    case 'NFC':
    case 'NFD':
    case 'NFKC':
    case 'NFKD': {
      const form = r['type'];
      return (s) => s.normalize(form);
    }
    case 'Sequence': {
      const fs = (Array.isArray(r['normalizers']) ? r['normalizers'] : []).map(normalizer);
      return (s) => fs.reduce((x, f) => f(x), s);
    }
    default:
      throw new Error(`normalizer ${String(r['type'])} is not supported for byte-level BPE (NFC, NFD, NFKC, NFKD, Sequence)`);
  }
}

/** The pre-tokenizer (and normalizer) of a byte-level tokenizer.json; it must end in a ByteLevel step. */
export function byteLevelPreTokenizer(pre: unknown, norm: unknown): PreTokenizer {
  const p = asObj(pre, 'pre_tokenizer');
  const last = p['type'] === 'Sequence' && Array.isArray(p['pretokenizers']) ? (p['pretokenizers'].at(-1) as Record<string, unknown> | undefined) : p;
  if (last?.['type'] !== 'ByteLevel') throw new Error('byte-level BPE needs a ByteLevel pre_tokenizer (alone or last in a Sequence)');
  const run = step(p);
  return { normalize: normalizer(norm), split: (text) => run([text]) };
}
