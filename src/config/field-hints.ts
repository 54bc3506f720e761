/**
 * Hints for an unknown config field: which fields the map takes, the one the
 * user probably meant, and where a field of that name does belong.
 *
 * Read from the schema itself (zod's definitions), so the hints cannot drift
 * from what is accepted. Only the wrappers and containers the config schema
 * uses are followed; anything else ends the walk (no hint, never an error).
 */
import type { z } from 'zod';

/** The parts of a zod v4 definition the walk reads. */
interface Def {
  type: string;
  shape?: Record<string, z.ZodType>;
  element?: z.ZodType;
  valueType?: z.ZodType;
  innerType?: z.ZodType;
  in?: z.ZodType;
  out?: z.ZodType;
  options?: readonly z.ZodType[];
  left?: z.ZodType;
  right?: z.ZodType;
  getter?: () => z.ZodType;
}

const defOf = (schema: z.ZodType): Def => (schema as unknown as { def: Def }).def;

/** The schemas a value at `schema` may be checked against, through wrappers, pipes and unions. */
function unwrap(schema: z.ZodType, out: z.ZodType[] = [], depth = 0): z.ZodType[] {
  if (depth > 20) return out;
  const def = defOf(schema);
  switch (def.type) {
    case 'default':
    case 'prefault':
    case 'optional':
    case 'nullable':
    case 'readonly':
    case 'catch':
    case 'nonoptional':
      if (def.innerType !== undefined) unwrap(def.innerType, out, depth + 1);
      break;
    case 'pipe':
      // A preprocess is a pipe from a transform: the object is on the other side.
      for (const s of [def.in, def.out]) if (s !== undefined) unwrap(s, out, depth + 1);
      break;
    case 'union':
      for (const s of def.options ?? []) unwrap(s, out, depth + 1);
      break;
    case 'intersection':
      for (const s of [def.left, def.right]) if (s !== undefined) unwrap(s, out, depth + 1);
      break;
    case 'lazy':
      if (def.getter !== undefined) unwrap(def.getter(), out, depth + 1);
      break;
    default:
      out.push(schema);
  }
  return out;
}

/** The schemas at `path` under `root`. */
function schemasAt(root: z.ZodType, path: readonly (string | number)[]): z.ZodType[] {
  let here = unwrap(root);
  for (const key of path) {
    const next: z.ZodType[] = [];
    for (const s of here) {
      const def = defOf(s);
      const child =
        def.type === 'object'
          ? typeof key === 'string'
            ? def.shape?.[key]
            : undefined
          : def.type === 'array'
            ? def.element
            : def.type === 'record'
              ? def.valueType
              : undefined;
      if (child !== undefined) unwrap(child, next);
    }
    here = next;
  }
  return here;
}

/** The field names a map at `path` takes. */
export function fieldsAt(root: z.ZodType, path: readonly (string | number)[]): string[] {
  const names = new Set<string>();
  for (const s of schemasAt(root, path)) {
    const def = defOf(s);
    if (def.type === 'object') for (const k of Object.keys(def.shape ?? {})) names.add(k);
  }
  return [...names];
}

/** Where else (as `a.b`, arrays as `a[]`) a field called `name` belongs, below `root`. */
export function placesOf(root: z.ZodType, name: string): string[] {
  const found: string[] = [];
  const seen = new Set<z.ZodType>();
  const walk = (schema: z.ZodType, at: string, depth: number): void => {
    if (depth > 8 || found.length > 8) return;
    for (const s of unwrap(schema)) {
      if (seen.has(s)) continue;
      seen.add(s);
      const def = defOf(s);
      if (def.type === 'array' && def.element !== undefined) walk(def.element, `${at}[]`, depth + 1);
      if (def.type !== 'object') continue;
      for (const [k, child] of Object.entries(def.shape ?? {})) {
        const here = at === '' ? k : `${at}.${k}`;
        if (k === name) found.push(here);
        walk(child, here, depth + 1);
      }
    }
  };
  walk(root, '', 0);
  return found;
}

/** Edit distance, capped: anything above `max` is `max + 1`. */
function distance(a: string, b: string, max: number): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    let best = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      row.push(v);
      if (v < best) best = v;
    }
    if (best > max) return max + 1;
    prev = row;
  }
  return prev[b.length]!;
}

/**
 * The known names `key` was most likely meant to be: the same letters in
 * another case, or one or two edits away, or (at most two) sharing a long
 * enough start (`retry`: `retries`, `retryBudget`).
 */
export function closest(key: string, known: readonly string[]): string[] {
  const lower = key.toLowerCase();
  const sameCase = known.find((k) => k.toLowerCase() === lower);
  if (sameCase !== undefined) return [sameCase];
  const max = key.length <= 4 ? 1 : 2;
  let best: string | undefined;
  let bestD = max + 1;
  for (const k of known) {
    const d = distance(lower, k.toLowerCase(), max);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  if (best !== undefined) return [best];
  // A shortened or differently ended name (retry for retries): a long enough common start, one candidate only.
  const prefixed = known.filter((k) => {
    let n = 0;
    const kl = k.toLowerCase();
    while (n < lower.length && n < kl.length && lower[n] === kl[n]) n++;
    return n >= 4 && n >= Math.ceil(lower.length * 0.6);
  });
  return prefixed.length <= 2 ? prefixed : [];
}

/**
 * The hint for unknown `key` in the map at `path`: "did you mean", else
 * where a field of that name belongs, with the fields this map takes (when
 * few enough to list). Empty when there is nothing useful to say.
 */
export function unknownFieldHint(root: z.ZodType, path: readonly (string | number)[], key: string): string {
  const known = fieldsAt(root, path);
  const parts: string[] = [];
  const near = closest(key, known);
  if (near.length > 0) parts.push(`did you mean ${near.map((k) => `"${k}"`).join(' or ')}?`);
  else {
    // Where the field is, not the field itself: services[].httpTimeouts, not services[].httpTimeouts.request.
    const elsewhere = placesOf(root, key).map((p) => p.slice(0, Math.max(0, p.length - key.length - 1)));
    if (elsewhere.length > 0 && elsewhere.length <= 3 && !elsewhere.includes(''))
      parts.push(`it belongs in ${elsewhere.join(' or ')}`);
  }
  if (near.length === 0 && known.length > 0 && known.length <= 12)
    parts.push(`fields here: ${[...known].sort().join(', ')}`);
  return parts.join('; ');
}
