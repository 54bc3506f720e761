import { readFile } from 'node:fs/promises';
import { isMap, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.ts';
import { closest, unknownFieldHint } from './field-hints.ts';
import { type Config, configSchema } from './schema.ts';

/** Read, parse and validate a config file. Throws ConfigError naming file, line and field. */
export async function loadConfigFile(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(cause);
    throw new ConfigError(`cannot read the config file (${why})`, { file }, { cause });
  }
  return parseConfig(text, file);
}

/** Parse and validate YAML (or JSON) config text; `file` names it in errors. */
export function parseConfig(text: string, file = '<config>'): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax !== undefined) {
    const line = lines.linePos(syntax.pos[0]).line;
    throw new ConfigError(`YAML syntax error: ${syntax.message.split('\n')[0]}`, { file, line });
  }
  const result = configSchema.safeParse(doc.toJS() ?? {}, { reportInput: true });
  if (result.success) return result.data;
  const { issue, path } = throughUnions(
    misspeltRequired(result.error.issues) ?? pickIssue(result.error.issues),
  );
  // An unknown key is best pointed at by its own line.
  const offset = offsetOf(doc, issue.code === 'unrecognized_keys' ? [...path, issue.keys[0] ?? ''] : path);
  const hint =
    issue.code === 'unrecognized_keys' && issue.keys.length === 1
      ? unknownFieldHint(configSchema, path, issue.keys[0]!)
      : '';
  throw new ConfigError(describe(issue, hint), {
    file,
    line: offset === undefined ? undefined : lines.linePos(offset).line,
    field: formatPath(path),
  });
}

/**
 * A required field missing beside an unknown one that is its misspelling
 * (`servces:` for `services:`): the unknown field is the thing to fix, not
 * the missing one.
 */
function misspeltRequired(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue | undefined {
  for (const missing of issues) {
    if (missing.code !== 'invalid_type' || missing.input !== undefined || missing.path.length === 0) continue;
    const name = missing.path[missing.path.length - 1];
    if (typeof name !== 'string') continue;
    const parent = missing.path.slice(0, -1);
    const unknown = issues.find(
      (i) =>
        i.code === 'unrecognized_keys' &&
        i.path.length === parent.length &&
        i.path.every((p, k) => p === parent[k]) &&
        i.keys.some((key) => closest(key, [name]).length > 0),
    );
    if (unknown !== undefined) return unknown;
  }
  return undefined;
}

/** Report the deepest issue first: it is the most specific one. */
function pickIssue(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue {
  return issues.reduce((a, b) => (b.path.length > a.path.length ? b : a));
}

/**
 * A union (`off` or `{ interval, timeout }`, a number or a dotted mask, …)
 * reports one issue at its own path, with its branches' issues inside. When
 * the value had the shape of a branch and failed deeper in it, that inner
 * issue names the field the user got wrong (`websocket.ping.interval`, not
 * `websocket.ping`), so report it, at its own path.
 */
function throughUnions(issue: z.core.$ZodIssue): { issue: z.core.$ZodIssue; path: (string | number)[] } {
  let path = issue.path.filter((p): p is string | number => typeof p !== 'symbol');
  while (issue.code === 'invalid_union' && issue.input !== undefined) {
    // Branches the value did not even have the type of say nothing about it.
    const fitting = issue.errors.filter(
      (branch) =>
        !branch.every(
          (i) => i.path.length === 0 && (i.code === 'invalid_type' || i.code === 'invalid_value'),
        ),
    );
    if (fitting.length === 0) break;
    const inner = pickIssue(fitting.flat());
    // A union with a message of its own explains a top-level mismatch better than any branch.
    if (inner.path.length === 0 && !issue.message.startsWith('Invalid input')) break;
    issue = inner;
    path = [...path, ...inner.path.filter((p): p is string | number => typeof p !== 'symbol')];
  }
  return { issue, path };
}

/** `hint`: for an unknown field, what the map takes (see field-hints.ts). */
function describe(issue: z.core.$ZodIssue, hint = ''): string {
  switch (issue.code) {
    case 'unrecognized_keys':
      return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}${hint === '' ? '' : ` (${hint})`}; check the spelling against docs/config.md`;
    case 'invalid_value':
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_type':
      if (issue.message.startsWith('Invalid input')) {
        return issue.input === undefined
          ? `is required (expected ${issue.expected})`
          : `expected ${issue.expected}`;
      }
      return issue.message;
    case 'too_small':
    case 'too_big': {
      const op =
        issue.code === 'too_small'
          ? issue.inclusive
            ? 'at least'
            : 'more than'
          : issue.inclusive
            ? 'at most'
            : 'less than';
      return issue.origin === 'array'
        ? `must list ${op} ${issue.code === 'too_small' ? issue.minimum : issue.maximum} item(s)`
        : `must be ${op} ${String(issue.code === 'too_small' ? issue.minimum : issue.maximum)}`;
    }
    case 'invalid_union': {
      if (issue.input === undefined) return 'is required';
      // A union error's own message is generic; prefer a custom one from a branch,
      // then a branch's own "write it like this", then the list of what fits.
      if (!issue.message.startsWith('Invalid input')) return issue.message;
      const branches = issue.errors.flat();
      const inner =
        branches.find((i) => i.code === 'custom') ??
        branches.find((i) => i.code === 'invalid_type' && !i.message.startsWith('Invalid input'));
      if (inner !== undefined) return inner.message;
      const fits = branches.flatMap((i) =>
        i.code === 'invalid_value'
          ? i.values.map((v) => JSON.stringify(v))
          : i.code === 'invalid_type'
            ? [i.expected === 'object' ? 'a map of fields' : `a ${i.expected}`]
            : [],
      );
      return fits.length > 0 ? `expected ${fits.join(' or ')}` : issue.message;
    }
    default:
      return issue.message;
  }
}

function formatPath(path: readonly (string | number)[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out === '' ? p : `.${p}`;
  return out;
}

/** Source offset of the deepest YAML node along `path` that exists. */
function offsetOf(doc: Document, path: readonly (string | number)[]): number | undefined {
  let node: unknown = doc.contents;
  let offset = doc.contents?.range?.[0];
  for (const key of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === key);
      if (pair === undefined) break;
      const keyNode = pair.key as Node | null;
      offset = keyNode?.range?.[0] ?? offset;
      node = pair.value;
    } else if (isSeq(node) && typeof key === 'number') {
      node = node.items[key];
      if (node === undefined) break;
      offset = (node as Node).range?.[0] ?? offset;
    } else {
      break;
    }
  }
  return offset;
}
