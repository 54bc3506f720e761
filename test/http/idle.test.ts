import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { ManualClock } from '../../src/cluster/clock.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil } from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** A backend answering `ok` (after `delayMs(url)`), behind a gateway with `settings` for the service. */
async function setup(settings: string, delayMs: (url: string) => number): Promise<number> {
  const backend = createServer((req, res) => setTimeout(() => res.end('ok'), delayMs(req.url ?? '/')));
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  cleanups.push(() => void backend.close());
  const port = await freePort();
  const { gateway } = await startGateway(`
services:
  - name: svc
    protocol: http
    listen: 127.0.0.1:${port}
    ${settings}
    backends: { static: [127.0.0.1:${(backend.address() as AddressInfo).port}] }
`);
  cleanups.push(() => gateway.shutdown());
  return port;
}

test('an idle keep-alive client connection is closed after clientIdle; one waiting for a slow response is not', async () => {
  const port = await setup('httpTimeouts: { clientIdle: 300ms }', (url) => (url === '/slow' ? 900 : 0));
  const slow = await dial(port);
  cleanups.push(() => void slow.destroy());
  slow.write('GET /slow HTTP/1.1\r\nhost: x\r\n\r\n');
  const idle = await dial(port);
  cleanups.push(() => void idle.destroy());
  idle.write('GET /fast HTTP/1.1\r\nhost: x\r\n\r\n');
  await readUntil(idle, 'ok');
  const idleSince = Date.now();
  const closed = new Promise((resolve) => idle.once('close', resolve));
  // The slow request outlives clientIdle and still gets its answer.
  assert.match(await readUntil(slow, 'ok', 5_000), /200 OK/);
  await closed;
  const took = Date.now() - idleSince;
  assert.ok(took >= 250 && took < 2_000, `closed after ${took} ms`);
});

test('maxConnectionAge: a request in flight at the age gets Connection: close on its response; an idle connection is closed', async () => {
  const port = await setup('maxConnectionAge: 400ms', (url) => (url === '/slow' ? 800 : 0));
  const busy = await dial(port);
  cleanups.push(() => void busy.destroy());
  const idle = await dial(port);
  cleanups.push(() => void idle.destroy());
  const opened = Date.now();
  const since = (): number => Date.now() - opened;
  const idleClosed = new Promise<number>((resolve) => idle.once('close', () => resolve(since())));
  const busyClosed = new Promise<number>((resolve) => busy.once('close', () => resolve(since())));
  idle.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
  assert.doesNotMatch(await readUntil(idle, 'ok'), /connection: close/i, 'young: keep-alive');
  // Still in flight when the connection's age (400 ms ± 10 %) comes.
  busy.write('GET /slow HTTP/1.1\r\nhost: x\r\n\r\n');
  assert.match(await readUntil(busy, 'ok'), /connection: close/i);
  assert.ok((await busyClosed) < 2_000);
  const idleMs = await idleClosed;
  assert.ok(idleMs >= 350 && idleMs < 2_000, `idle connection closed after ${idleMs} ms`);
});

test('a cleartext client that never says which protocol it speaks is closed after 30 s; one that speaks by then is served', async () => {
  const backend = createServer((_req, res) => res.end('ok'));
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  cleanups.push(() => void backend.close());
  const port = await freePort();
  const clock = new ManualClock();
  const { gateway } = await startGateway(
    `
services:
  - name: svc
    protocol: http
    listen: 127.0.0.1:${port}
    limits: { maxConnections: 10 }
    backends: { static: [127.0.0.1:${(backend.address() as AddressInfo).port}] }
`,
    { clock },
  );
  cleanups.push(() => gateway.shutdown());
  const silent = await dial(port);
  cleanups.push(() => void silent.destroy());
  // The start of the HTTP/2 preface, which an HTTP/1.1 request could also start with: undecided.
  const halfPreface = await dial(port);
  cleanups.push(() => void halfPreface.destroy());
  halfPreface.write('PRI * HT');
  const late = await dial(port);
  cleanups.push(() => void late.destroy());
  const closed = (s: typeof silent): Promise<void> =>
    new Promise((resolve, reject) => {
      s.once('close', () => resolve());
      setTimeout(() => reject(new Error('still open after the first-bytes timeout')), 5_000).unref();
    });
  await new Promise((r) => setTimeout(r, 50));
  clock.advance(29_000);
  late.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
  assert.match(await readUntil(late, 'ok'), /200 OK/);
  assert.equal(silent.destroyed, false, 'still open at 29 s');
  clock.advance(1_000);
  await Promise.all([closed(silent), closed(halfPreface)]);
  // The one that spoke in time is an HTTP/1.1 connection now, under its own timeouts.
  assert.equal(late.destroyed, false);
});
