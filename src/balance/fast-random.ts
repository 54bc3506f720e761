/**
 * The default randomness for `random` and `p2c`: a small PRNG (mulberry32)
 * in 32-bit integer arithmetic, seeded once from Math.random. Math.random
 * itself returns a freshly allocated heap number on every call from optimised
 * code; this one inlines into the pick and allocates nothing. Not for
 * anything security-related — it only spreads load.
 */
let state = (Math.random() * 0x100000000) | 0;

/** A number in [0, 1). */
export function fastRandom(): number {
  state = (state + 0x6d2b79f5) | 0;
  let t = Math.imul(state ^ (state >>> 15), 1 | state);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
