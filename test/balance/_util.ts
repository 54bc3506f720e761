import type { Target } from '../../src/balance/types.ts';

/** Deterministic PRNG (mulberry32) for property tests. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function shuffle<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** A target whose load and weight tests can change. */
export interface TestTarget extends Target {
  key: string;
  weight: number;
  load: number;
  since: number;
}

export function target(key: string, weight = 1, load = 0, since = -Infinity): TestTarget {
  return { key, weight, load, since };
}

export function targets(n: number, weight = 1): TestTarget[] {
  return Array.from({ length: n }, (_, i) => target(`10.0.${i >> 8}.${i & 255}:8080`, weight));
}
