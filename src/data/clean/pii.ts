/**
 * PII scrubbing: typed placeholders for e-mail addresses, phone numbers, IP addresses, credit-card numbers
 * (Luhn-checked) and credentials inside URLs. Patterns are deliberately narrow so that look-alikes survive:
 * version numbers (v1.2.3, 10.0.19045), dates (2024-01-15, 15/01/2024), times (12:30:45), prices ($1,234.56).
 */
export type PiiType = 'email' | 'phone' | 'ip' | 'credit_card' | 'url_credentials';

export const PII_PLACEHOLDER: Record<PiiType, string> = {
  url_credentials: '<CREDENTIALS>',
  email: '<EMAIL>',
  credit_card: '<CREDIT_CARD>',
  ip: '<IP_ADDRESS>',
  phone: '<PHONE>',
};

// scheme://user:password@host → scheme://<CREDENTIALS>@host (the host and path stay readable).
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s:@/]+:[^\s@/]+@/gi;
const EMAIL = /(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9])?@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b/g;
// 13–19 digits, optionally grouped by single spaces or dashes; Luhn decides.
const CARD = /(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d.,]\d|\d)/g;
const OCTET = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
// Not after a 'v' or a digit/dot (versions), not followed by another .digit (a five-part version).
const IPV4 = new RegExp(`(?<![\\w.])${OCTET}(?:\\.${OCTET}){3}(?![\\w]|\\.\\d)`, 'g');
// Candidates with ≥ 2 colons; validated below (times like 12:30:45 have too few groups and no '::').
const IPV6 = /(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)?(?:%\w+)?(?![\w:])/g;
// Phone numbers: optional +country code, then 3 groups (area code possibly in parentheses), 9–15 digits.
const PHONE = /(?<![\w+.\/-])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w]|[ .\/-]\d)/g;

export function luhnValid(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

function validIpv6(s: string): boolean {
  const addr = s.replace(/%\w+$/, '');
  if (!/\d/.test(addr)) return false; // "dead:beef:cafe" words, C++ "a::b"
  const halves = addr.split('::');
  if (halves.length > 2) return false;
  const groups = halves.flatMap((h) => (h === '' ? [] : h.split(':')));
  if (groups.some((g) => !/^[0-9A-Fa-f]{1,4}$/.test(g))) return false;
  return halves.length === 2 ? groups.length <= 7 : groups.length === 8;
}

function digitsOf(s: string): string {
  return s.replace(/\D/g, '');
}

/** Replace every PII match of the given types; returns the new text and counts per type. */
export function scrubPii(text: string, types: readonly PiiType[]): { text: string; counts: Partial<Record<PiiType, number>>; found: string[] } {
  const counts: Partial<Record<PiiType, number>> = {};
  const found: string[] = [];
  const hit = (type: PiiType, match: string) => {
    counts[type] = (counts[type] ?? 0) + 1;
    found.push(match);
  };
  // Order matters: credentials before e-mails (user:pass@host looks like one), cards before phones.
  for (const type of (['url_credentials', 'email', 'credit_card', 'ip', 'phone'] as const).filter((t) => types.includes(t))) {
    if (type === 'url_credentials') {
      text = text.replace(URL_CREDENTIALS, (m, scheme: string) => (hit(type, m), `${scheme}${PII_PLACEHOLDER.url_credentials}@`));
    } else if (type === 'email') {
      text = text.replace(EMAIL, (m) => (hit(type, m), PII_PLACEHOLDER.email));
    } else if (type === 'credit_card') {
      text = text.replace(CARD, (m) => (luhnValid(digitsOf(m)) ? (hit(type, m), PII_PLACEHOLDER.credit_card) : m));
    } else if (type === 'ip') {
      text = text.replace(IPV4, (m) => (hit(type, m), PII_PLACEHOLDER.ip));
      text = text.replace(IPV6, (m) => (validIpv6(m) ? (hit(type, m), PII_PLACEHOLDER.ip) : m));
    } else {
      text = text.replace(PHONE, (m) => {
        const n = digitsOf(m).length;
        return n >= 9 && n <= 15 ? (hit(type, m), PII_PLACEHOLDER.phone) : m;
      });
    }
  }
  return { text, counts, found };
}
