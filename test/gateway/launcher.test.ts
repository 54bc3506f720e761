import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { LAUNCHER_FLAGS } from '../../bench/lib/peers.ts';

const ROOT = join(import.meta.dirname, '../..');
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8');

// The young-generation size, the malloc arena limit and `--expose-gc` decide
// holdfast's latency tail and its memory per idle connection (src/cli/main.ts).
// Every way of starting it must use the same ones, or users and benchmarks
// run a different gateway than the one measured.
test('the launcher, npm scripts, container image and benchmarks start Node the same way', () => {
  const shebang = read('src/cli/main.ts').split('\n')[0]!;
  const m = /^#!\/usr\/bin\/env -S (MALLOC_ARENA_MAX=\d+) node (.+)$/.exec(shebang);
  assert.ok(m, `unexpected launcher line: ${shebang}`);
  const [, arena, flags] = m;
  assert.equal(LAUNCHER_FLAGS, flags);

  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
  for (const name of ['start', 'holdfast']) {
    assert.ok(scripts[name]!.startsWith(`${arena} node ${flags} src/cli/main.ts`), `npm script ${name}`);
  }

  const containerfile = read('deploy/Containerfile');
  assert.match(containerfile, new RegExp(`^ENV ${arena}$`, 'm'));
  const entry = /^ENTRYPOINT (\[.*\])$/m.exec(containerfile)?.[1];
  assert.deepEqual(JSON.parse(entry!), ['node', ...flags!.split(' '), 'dist/cli/main.js']);
});
