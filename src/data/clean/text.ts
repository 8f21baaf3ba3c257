/** Small text utilities the cleaning steps share: words, hashing. */
import { createHash } from 'node:crypto';

/** Lower-cased words: runs of letters, digits and apostrophes inside words. */
export function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*/gu) ?? [];
}

/** Whitespace-separated tokens as Gopher counts them (punctuation attached). */
export function rawWords(text: string): string[] {
  return text.split(/\s+/).filter((w) => w.length > 0);
}

/** A 128-bit content key (hex) for exact matching; collisions are not a practical concern. */
export function contentKey(text: string): string {
  return createHash('md5').update(text).digest('base64');
}

/** 32-bit FNV-1a over a string's UTF-16 code units, seeded. */
export function fnv1a(s: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** MurmurHash3's 32-bit finaliser: a fast, well-mixing bijection on 32-bit integers. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
