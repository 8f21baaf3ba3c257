/** Normalisation: NFC, line endings and whitespace, control characters, invalid UTF-8. */
import type { z } from 'zod';
import type { NormalizeStepSchema } from '../../config/clean.js';

export type NormalizeOptions = z.infer<typeof NormalizeStepSchema>;

// C0 and C1 controls except \t and \n, DEL, and zero-width characters (ZWSP, ZWNJ, ZWJ, word joiner, BOM).
const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\u200B-\u200D\u2060\uFEFF]/g;
// Unicode spaces other than the plain space (NBSP, en/em spaces, ideographic space…).
const ODD_SPACES = /[\u00A0\u1680\u2000-\u200A\u202F\u205F\u3000]/g;
const REPLACEMENT = /\uFFFD/g;

export interface NormalizeResult {
  /** undefined: the document is dropped (invalid UTF-8 with `invalid_utf8: drop`, or nothing left). */
  text: string | undefined;
  invalidUtf8: number;
  controlChars: number;
}

export function normalizeText(text: string, o: NormalizeOptions): NormalizeResult {
  // Readers decode with replacement, so invalid UTF-8 arrives as U+FFFD.
  const invalidUtf8 = countMatches(text, REPLACEMENT);
  if (invalidUtf8 > 0) {
    if (o.invalid_utf8 === 'drop') return { text: undefined, invalidUtf8, controlChars: 0 };
    text = text.replace(REPLACEMENT, '');
  }
  if (o.whitespace) text = text.replace(/\r\n?/g, '\n'); // before control chars: \r is one of them
  let controlChars = 0;
  if (o.control_chars) {
    controlChars = countMatches(text, CONTROL);
    if (controlChars > 0) text = text.replace(CONTROL, '');
  }
  if (o.nfc) text = text.normalize('NFC');
  if (o.whitespace) {
    text = text.replace(ODD_SPACES, ' ').replace(/[ \t]+$/gm, '').replace(/\n{3,}/g, '\n\n').trim();
  }
  return { text: text.length > 0 ? text : undefined, invalidUtf8, controlChars };
}

function countMatches(s: string, re: RegExp): number {
  let n = 0;
  re.lastIndex = 0;
  while (re.exec(s) !== null) n++;
  return n;
}
