/**
 * Builds the synthetic preference set data/alpaca_pref.jsonl from data/alpaca_en_demo.jsonl (deterministic):
 * for every Alpaca row with an output of at least 8 words,
 *   prompt   = the instruction (+ "\n\n" + input when present), as SFT renders it;
 *   chosen   = the real Alpaca output;
 *   rejected = even rows: the same words in a seeded random order (shuffled);
 *              odd rows:  the output cut after 30–70 % of its words, trailing punctuation removed
 *                         (truncated mid-sentence).
 * Usage: node --import tsx scripts/alpaca-preferences.ts [in.jsonl] [out.jsonl]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { Rng } from '../src/util/rng.js';

const [inPath = 'data/alpaca_en_demo.jsonl', outPath = 'data/alpaca_pref.jsonl'] = process.argv.slice(2);
const rng = new Rng(2024);
const out: string[] = [];
let shuffled = 0, truncated = 0;
readFileSync(inPath, 'utf8').split('\n').filter((l) => l.trim()).forEach((line, i) => {
  const r = JSON.parse(line) as { instruction: string; input?: string; output: string };
  const words = r.output.split(/\s+/).filter(Boolean);
  if (words.length < 8) return;
  let rejected: string;
  if (i % 2 === 0) {
    const p = [...words];
    do {
      for (let k = p.length - 1; k > 0; k--) {
        const j = rng.nextInt(k + 1);
        [p[k], p[j]] = [p[j]!, p[k]!];
      }
    } while (p.join(' ') === words.join(' '));
    rejected = p.join(' ');
    shuffled++;
  } else {
    const keep = Math.max(3, Math.floor(words.length * (0.3 + 0.4 * rng.nextFloat())));
    rejected = words.slice(0, keep).join(' ').replace(/[.!?,;:]+$/, '');
    truncated++;
  }
  const prompt = r.input ? `${r.instruction}\n\n${r.input}` : r.instruction;
  out.push(JSON.stringify({ prompt, chosen: r.output, rejected }));
});
writeFileSync(outPath, out.join('\n') + '\n');
console.log(`${outPath}: ${out.length} pairs (${shuffled} shuffled, ${truncated} truncated)`);
