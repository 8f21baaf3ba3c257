/**
 * Seeded random numbers with a state that fits in a JSON string, so a resumed run draws the same
 * batches. The generator is llama2.c's xorshift64*, which also lets `generate` reproduce run.c's
 * seeded sampling exactly.
 */
const MASK64 = (1n << 64n) - 1n;

export class Rng {
  private state: bigint;

  constructor(seed: number | bigint | string) {
    this.state = typeof seed === 'string' ? BigInt(seed) : BigInt(seed) & MASK64;
    if (this.state === 0n) this.state = 0x9e3779b97f4a7c15n; // xorshift must not start at zero
  }

  /** 32 random bits, exactly as llama2.c's random_u32. */
  nextU32(): number {
    let s = this.state;
    s ^= s >> 12n;
    s ^= (s << 25n) & MASK64;
    s ^= s >> 27n;
    this.state = s;
    return Number(((s * 0x2545f4914f6cdd1dn) & MASK64) >> 32n);
  }

  /** Uniform float in [0, 1) with 24 bits, exactly as llama2.c's random_f32. */
  nextFloat(): number {
    return (this.nextU32() >>> 8) / 16777216.0;
  }

  /** Uniform integer in [0, n). */
  nextInt(n: number): number {
    return Math.floor(((this.nextU32() * 2 ** 21) + (this.nextU32() >>> 11)) / 2 ** 53 * n);
  }

  /** Standard normal via Box–Muller. */
  nextNormal(): number {
    const u = 1 - this.nextFloat();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.nextFloat());
  }

  getState(): string {
    return this.state.toString();
  }
}
