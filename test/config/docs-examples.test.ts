/**
 * What users copy must load: every file in examples/, the config in the
 * Kubernetes ConfigMap, and the YAML snippets of README.md and docs/*.md, all
 * through the real loader. A snippet that shows only part of a service
 * (`backends:`, `health:`, `outlierDetection:`) is loaded inside a minimal
 * service; one with a placeholder (`…`) is an outline and is skipped.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { loadConfigFile, parseConfig } from '../../src/config/load.ts';

const root = new URL('../../', import.meta.url);
const read = (path: string): string => readFileSync(new URL(path, root), 'utf8');

/** Top-level keys a snippet may have and still be part of one service. */
const SERVICE_FIELDS = new Set(['backends', 'health', 'outlierDetection']);

interface Snippet {
  where: string;
  text: string;
}

function yamlSnippets(path: string): Snippet[] {
  const text = read(path);
  const out: Snippet[] = [];
  for (const m of text.matchAll(/^```ya?ml\n([\s\S]*?)^```/gm)) {
    const line = text.slice(0, m.index).split('\n').length + 1;
    out.push({ where: `${path}:${line}`, text: m[1]! });
  }
  return out;
}

/** The snippet as a whole config, or undefined for an outline. */
function asConfig(s: Snippet): string | undefined {
  if (s.text.includes('…')) return undefined;
  const keys = Object.keys(parse(s.text) as Record<string, unknown>);
  if (keys.includes('services')) return s.text;
  assert.ok(
    keys.every((k) => SERVICE_FIELDS.has(k)),
    `${s.where}: a snippet with top-level ${keys.join(', ')} is neither a config nor part of a service; teach this test about it`,
  );
  const body = s.text
    .trimEnd()
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
  return [
    'services:',
    '  - name: snippet',
    '    protocol: http',
    '    listen: 127.0.0.1:1',
    ...(keys.includes('backends') ? [] : ['    backends: { static: [127.0.0.1:2] }']),
    body,
    '',
  ].join('\n');
}

describe('documented configs', () => {
  test('every file in examples/ loads through the config loader', async () => {
    const files = readdirSync(new URL('examples/', root)).filter((f) => /\.ya?ml$/.test(f));
    assert.ok(files.length > 0);
    for (const f of files) {
      await assert.doesNotReject(loadConfigFile(new URL(`examples/${f}`, root).pathname), `examples/${f}`);
    }
  });

  test('the holdfast.yaml of the Kubernetes ConfigMap loads', () => {
    const map = parse(read('deploy/configmap.yaml')) as { data: Record<string, string> };
    const config = parseConfig(map.data['holdfast.yaml']!, 'deploy/configmap.yaml');
    assert.ok(config.services.length > 0);
  });

  test('every YAML snippet in README.md and docs/ loads, alone or inside a service', () => {
    const docs = readdirSync(new URL('docs/', root))
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`);
    let loaded = 0;
    for (const path of ['README.md', ...docs]) {
      for (const s of yamlSnippets(path)) {
        const config = asConfig(s);
        if (config === undefined) continue;
        assert.doesNotThrow(() => parseConfig(config, s.where), s.where);
        loaded++;
      }
    }
    assert.ok(loaded >= 10, `only ${loaded} snippets found; did the fence style change?`);
  });
});
