import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import { Gateway } from '../../src/gateway.ts';
import { memoryLogger, startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil, startEchoBackend, waitFor } from '../helpers/net.ts';

/** Replace the file the way editors and ConfigMap mounts do: write elsewhere, rename over. */
function replaceFile(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

describe('file discovery', () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('edits to the backends file are picked up: new backends take new connections, removed ones drain', async () => {
    const a = await startEchoBackend({ greet: true });
    const b = await startEchoBackend({ greet: true });
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const dir = mkdtempSync(join(tmpdir(), 'holdfast-file-'));
    const file = join(dir, 'backends.yaml');
    writeFileSync(file, `- 127.0.0.1:${a.port}\n`);
    const listen = await freePort();
    const { gateway, records } = await startGateway(`
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    drain: { timeout: 5s }
    backends:
      file: { path: ${file}, pollInterval: 1s }
`);
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('svc')!.cluster;
    await waitFor(() => cluster.backends.size === 1, 5_000, 'the first read');
    const first = await dial(listen);
    cleanups.push(() => first.destroy());
    assert.equal((await readUntil(first, '\n')).trim(), String(a.port));

    // JSON works too, and an object with `backends:`.
    replaceFile(file, JSON.stringify({ backends: [{ address: `127.0.0.1:${b.port}`, weight: 2 }] }));
    await waitFor(
      () => cluster.backends.get(`127.0.0.1:${a.port}`)?.state !== 'active',
      5_000,
      'the edit to be seen',
    );
    const changed = records.find(
      (r) =>
        r.msg === 'endpoints changed' &&
        (r.added as string[]).length > 0 &&
        (r.removed as string[]).length > 0,
    );
    assert.ok(changed, 'logged with what changed');
    assert.equal(changed.reason, 'file changed');
    const second = await dial(listen);
    cleanups.push(() => second.destroy());
    assert.equal((await readUntil(second, '\n')).trim(), String(b.port));
    // The removed backend's connection is asked to leave (TCP FIN), not reset.
    await waitFor(() => first.readableEnded, 5_000, 'the FIN of the drained connection');
    assert.equal(cluster.backends.get(`127.0.0.1:${b.port}`)?.weight, 2);

    // A broken file keeps the last good set, and says why.
    replaceFile(file, '- not an address\n');
    await waitFor(
      () => records.some((r) => r.msg === 'discovery failed; keeping the last endpoint set'),
      5_000,
      'the error',
    );
    const err = records.find((r) => r.msg === 'discovery failed; keeping the last endpoint set')!;
    assert.equal(err.reason, 'parse');
    assert.match(String(err.err), /backends\.yaml/);
    assert.equal(cluster.backends.get(`127.0.0.1:${b.port}`)?.state, 'active');
    const metrics = await gateway.metrics.metrics();
    assert.match(metrics, /holdfast_discovery_errors_total\{service="svc",source="file",reason="parse"\} 1/);
    assert.match(metrics, /holdfast_discovery_updates_total\{service="svc",source="file"\} 2/);
    assert.match(metrics, /holdfast_discovery_endpoints\{service="svc",source="file"\} 1/);

    // Fixed again: picked up.
    replaceFile(file, `- 127.0.0.1:${a.port}\n- 127.0.0.1:${b.port}\n`);
    await waitFor(
      () => [...cluster.backends.values()].filter((x) => x.state === 'active').length === 2,
      5_000,
      'the fix',
    );
  });

  test('a reload that switches a service from static to file backends re-creates its source', async () => {
    const a = await startEchoBackend({ greet: true });
    const b = await startEchoBackend({ greet: true });
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const dir = mkdtempSync(join(tmpdir(), 'holdfast-file-'));
    const file = join(dir, 'backends.json');
    writeFileSync(file, JSON.stringify([`127.0.0.1:${b.port}`]));
    const listen = await freePort();
    const { log, records } = memoryLogger();
    const config = (backends: string) =>
      parseConfig(`
services:
  - name: svc
    listen: 127.0.0.1:${listen}
    backends: ${backends}
`);
    const gateway = await Gateway.start(config(`{ static: [127.0.0.1:${a.port}] }`), { log });
    cleanups.push(() => gateway.shutdown());
    const cluster = gateway.services.get('svc')!.cluster;
    assert.deepEqual(
      [...cluster.backends.keys()],
      [`127.0.0.1:${a.port}`],
      'static backends apply at start, synchronously',
    );
    await gateway.reload(config(`{ file: { path: ${file} } }`));
    await waitFor(
      () => cluster.backends.get(`127.0.0.1:${b.port}`)?.state === 'active',
      5_000,
      'the file source',
    );
    assert.ok(records.some((r) => r.msg === 'backend source changed' && r.source === 'file'));
    assert.ok(
      !cluster.backends.has(`127.0.0.1:${a.port}`) ||
        cluster.backends.get(`127.0.0.1:${a.port}`)!.state === 'draining',
    );
  });

  test('two sources for one service is a config error naming both', () => {
    assert.throws(
      () =>
        parseConfig(`
services:
  - name: svc
    listen: 127.0.0.1:1
    backends:
      static: [127.0.0.1:2]
      dns: { name: x.example, port: 80 }
`),
      /choose one backend source per service, not static and dns/,
    );
  });
});
