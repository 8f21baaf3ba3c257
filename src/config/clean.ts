/**
 * The `clean:` section of a prepare (or clean) config: an ordered list of steps, each optional, each a
 * one-key object naming the step and its settings. Defaults follow datatrove / Gopher / C4 where those exist.
 */
import { z } from 'zod';

const fraction = z.number().min(0).max(1);

export const CLEAN_STEP_NAMES = ['normalize', 'exact_dedup', 'line_dedup', 'near_dedup', 'quality', 'pii', 'toxicity'] as const;
export type CleanStepName = (typeof CLEAN_STEP_NAMES)[number];

export const NormalizeStepSchema = z.strictObject({
  /** Unicode NFC. */
  nfc: z.boolean().default(true),
  /** CRLF / CR → LF, trailing spaces removed, Unicode spaces → ' ', 3+ newlines → 2, document trimmed. */
  whitespace: z.boolean().default(true),
  /** C0/C1 control characters (except tab and newline) and zero-width characters removed. */
  control_chars: z.boolean().default(true),
  /** Invalid UTF-8 (decoded as U+FFFD): `repair` removes it, `drop` drops the document. */
  invalid_utf8: z.enum(['repair', 'drop']).default('repair'),
});

export const ExactDedupStepSchema = z.strictObject({
  /** Compare documents after lower-casing and collapsing whitespace (datatrove's simplified text). */
  normalize: z.boolean().default(true),
});

export const LineDedupStepSchema = z.strictObject({
  /** A line (or paragraph) counts as boilerplate once it has appeared in this many documents; copies from then on are removed. */
  min_docs: z.int().min(2).default(3),
  /** Shorter lines (speaker names, "Chapter 1", blank lines) are never removed. */
  min_chars: z.int().min(1).default(32),
  /** Unit: single lines, or blank-line separated paragraphs. */
  unit: z.enum(['line', 'paragraph']).default('line'),
  /** Bound on the index of line hashes (entries); past it, the oldest are forgotten. ~40 bytes each. */
  max_index_entries: z.int().positive().default(4_000_000),
});

export const NearDedupStepSchema = z.strictObject({
  /** Words per shingle (datatrove: 5). */
  shingle_size: z.int().min(1).default(5),
  /** LSH bands × rows = number of MinHash permutations (datatrove: 14 × 8). */
  bands: z.int().min(1).default(14),
  rows: z.int().min(1).default(8),
  /** A candidate pair is a duplicate when the MinHash estimate of its Jaccard similarity reaches this; the 14×8 S-curve's midpoint is ≈ 0.72. */
  threshold: fraction.default(0.72),
  /** Bound on indexed documents (~1.3 KB each at 14×8); past it the oldest leave the index (FIFO). */
  max_index_docs: z.int().positive().default(200_000),
  seed: z.int().nonnegative().default(1),
});

export const QualityStepSchema = z.strictObject({
  // Gopher (Rae et al. 2021, appendix A) unless said otherwise.
  min_words: z.int().nonnegative().default(50),
  max_words: z.int().positive().default(100_000),
  min_mean_word_length: z.number().nonnegative().default(3),
  max_mean_word_length: z.number().positive().default(10),
  /** ('#' + '...' / '…') per word. */
  max_symbol_word_ratio: z.number().nonnegative().default(0.1),
  max_bullet_lines: fraction.default(0.9),
  max_ellipsis_lines: fraction.default(0.3),
  /** C4: share of non-empty lines ending in terminal punctuation (. ! ? " '); 0 disables. */
  min_punct_lines: fraction.default(0.1),
  max_duplicate_lines: fraction.default(0.3),
  max_duplicate_line_chars: fraction.default(0.2),
  /** Share of characters in the most frequent 2-, 3-, 4-gram. */
  max_top_ngram_chars: z.strictObject({ '2': fraction.default(0.2), '3': fraction.default(0.18), '4': fraction.default(0.16) }).prefault({}),
  /** Share of characters in duplicated 5- … 10-grams. */
  max_dup_ngram_chars: z.strictObject({
    '5': fraction.default(0.15), '6': fraction.default(0.14), '7': fraction.default(0.13),
    '8': fraction.default(0.12), '9': fraction.default(0.11), '10': fraction.default(0.1),
  }).prefault({}),
  /** At least this many of Gopher's stop words (the, be, to, of, and, that, have, with). */
  min_stop_words: z.int().nonnegative().default(2),
  /** Language check by script: share of letters in this script. */
  script: z.enum(['latin', 'cyrillic', 'greek', 'han', 'arabic', 'any']).default('latin'),
  min_script_share: fraction.default(0.5),
});

export const PiiStepSchema = z.strictObject({
  types: z.array(z.enum(['email', 'phone', 'ip', 'credit_card', 'url_credentials'])).min(1)
    .default(['url_credentials', 'email', 'credit_card', 'ip', 'phone']),
});

export const ToxicityStepSchema = z.strictObject({
  /** One word or phrase per line; default: data/badwords-en.txt (LDNOOBW, CC BY 4.0, the list C4 used). */
  word_list: z.string().min(1).default('data/badwords-en.txt'),
  /** Score = list hits per word; a document is flagged when its score is ≥ threshold (and it has ≥ 1 hit). */
  threshold: fraction.default(0.01),
  /** drop: flagged documents are removed; tag: only counted (and listed with --samples). */
  mode: z.enum(['drop', 'tag']).default('drop'),
});

/** One step: an object with exactly one key, the step's name (so a misspelt step is reported as an unknown key). */
export const CleanStepSchema = z.preprocess(nullToEmpty, z.looseObject({
  normalize: NormalizeStepSchema.optional(),
  exact_dedup: ExactDedupStepSchema.optional(),
  line_dedup: LineDedupStepSchema.optional(),
  near_dedup: NearDedupStepSchema.optional(),
  quality: QualityStepSchema.optional(),
  pii: PiiStepSchema.optional(),
  toxicity: ToxicityStepSchema.optional(),
}).check((ctx) => {
  const keys = Object.keys(ctx.value);
  const unknown = keys.find((k) => !(CLEAN_STEP_NAMES as readonly string[]).includes(k));
  if (unknown !== undefined) {
    ctx.issues.push({ code: 'custom', input: ctx.value, path: [unknown], message: `unknown step (steps: ${CLEAN_STEP_NAMES.join(', ')})` });
  } else if (keys.length !== 1) {
    ctx.issues.push({ code: 'custom', input: ctx.value, message: `one step per list item (got ${keys.length ? keys.join(' + ') : 'none'})` });
  }
}));
/** `- normalize:` with nothing after it is YAML null: take it as "all defaults". */
function nullToEmpty(v: unknown): unknown {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x ?? {}]));
}

export type CleanStepConfig = z.infer<typeof CleanStepSchema>;
export const CleanSchema = z.strictObject({
  steps: z.array(CleanStepSchema).min(1),
  /** Write this many removed examples per step to a samples JSONL beside the output (0: none). */
  samples: z.int().nonnegative().default(0),
});
export type CleanConfig = z.infer<typeof CleanSchema>;

/** `llmctl clean`: the same steps, writing the cleaned corpus as JSONL instead of token shards. */
export const CleanOnlyConfigSchema = z.strictObject({
  inputs: z.array(z.string().min(1)).min(1),
  /** JSONL field that holds the text; rows with a `messages` list are cleaned message by message. */
  text_field: z.string().default('text'),
  /** Plain-text inputs are cut into documents at blank lines (`paragraph`, as prepare does) or kept whole (`file`). */
  text_unit: z.enum(['paragraph', 'file']).default('paragraph'),
  clean: CleanSchema,
  /** Output JSONL file; its report goes beside it as `<out>.report.json`. */
  out: z.string().min(1),
});
export type CleanOnlyConfig = z.infer<typeof CleanOnlyConfigSchema>;
