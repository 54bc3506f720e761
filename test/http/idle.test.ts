import assert from 'node:assert/strict';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { after, test } from 'node:test';
import { ManualClock } from '../../src/cluster/clock.ts';
import { frame, SETTINGS } from '../../src/proxy/h2/frames.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, freePorts, readUntil, waitFor } from '../helpers/net.ts';
import { makeCert } from '../helpers/tls.ts';

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

test('an HTTP/2 client that stalls before its whole preface and first SETTINGS is closed after 30 s, cleartext or TLS; one that sent them stays', async (t) => {
  const made = makeCert();
  if (typeof made === 'string') return t.skip(made);
  cleanups.push(() => rmSync(made.dir, { recursive: true, force: true }));
  const backend = createServer((_req, res) => res.end('ok'));
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  cleanups.push(() => void backend.close());
  const [plain = 0, tls = 0] = await freePorts(2);
  const clock = new ManualClock();
  const service = (name: string, port: number, extra: string): string => `
  - name: ${name}
    protocol: http
    listen: 127.0.0.1:${port}${extra}
    backends: { static: [127.0.0.1:${(backend.address() as AddressInfo).port}] }`;
  const { gateway } = await startGateway(
    `services:${service('plain', plain, '')}${service('tls', tls, `\n    tls: { cert: ${made.cert}, key: ${made.key} }`)}\n`,
    { clock },
  );
  cleanups.push(() => gateway.shutdown());
  const live = (name: string): number => gateway.services.get(name)!.handler.live;
  const preface = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
  const settings = frame(SETTINGS, 0, 0);
  const sockets: Socket[] = [];
  const plainClient = async (bytes: string | Buffer): Promise<Socket> => {
    const s = await dial(plain);
    sockets.push(s);
    s.on('error', () => {});
    s.write(bytes);
    return s;
  };
  const tlsClient = async (bytes: string | Buffer): Promise<TLSSocket> => {
    const s = tlsConnect({ port: tls, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    sockets.push(s);
    s.on('error', () => {});
    await once(s, 'secureConnect');
    assert.equal(s.alpnProtocol, 'h2');
    if (bytes.length > 0) s.write(bytes);
    return s;
  };
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
  });
  // Enough to be told apart as HTTP/2 (the preface's first line), and no more.
  const firstLine = await plainClient('PRI * HTTP/2.0\r\n');
  const noSettings = await plainClient(preface);
  const tlsSilent = await tlsClient('');
  const tlsNoSettings = await tlsClient(preface);
  const plainReady = await plainClient(Buffer.concat([Buffer.from(preface), settings]));
  const tlsReady = await tlsClient(Buffer.concat([Buffer.from(preface), settings]));
  for (const s of sockets) s.resume();
  await waitFor(() => live('plain') === 3 && live('tls') === 3, 3_000, 'all six accepted');
  // Let the bytes be read before time moves.
  await new Promise((r) => setTimeout(r, 100));
  clock.advance(29_000);
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(
    sockets.every((s) => !s.destroyed),
    'all open at 29 s',
  );
  clock.advance(1_000);
  const stalled = [firstLine, noSettings, tlsSilent, tlsNoSettings];
  await waitFor(() => stalled.every((s) => s.destroyed), 3_000, 'the stalled clients closed at 30 s');
  assert.equal(plainReady.destroyed, false);
  assert.equal(tlsReady.destroyed, false);
  assert.equal(live('plain') + live('tls'), 2);
});

test('an HTTPS client that completes its handshake and sends nothing is closed after 30 s; one that sent a request stays', async (t) => {
  const made = makeCert();
  if (typeof made === 'string') return t.skip(made);
  cleanups.push(() => rmSync(made.dir, { recursive: true, force: true }));
  const backend = createServer((_req, res) => res.end('ok'));
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  cleanups.push(() => void backend.close());
  const port = await freePort();
  const clock = new ManualClock();
  const { gateway } = await startGateway(
    `
services:
  - name: tls
    protocol: http
    listen: 127.0.0.1:${port}
    tls: { cert: ${made.cert}, key: ${made.key} }
    backends: { static: [127.0.0.1:${(backend.address() as AddressInfo).port}] }
`,
    { clock },
  );
  cleanups.push(() => gateway.shutdown());
  const client = async (): Promise<TLSSocket> => {
    const s = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    cleanups.push(() => void s.destroy());
    s.on('error', () => {});
    await once(s, 'secureConnect');
    assert.equal(s.alpnProtocol, 'http/1.1');
    return s;
  };
  const silent = await client();
  const talking = await client();
  talking.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
  await readUntil(talking, 'ok');
  await waitFor(() => gateway.services.get('tls')!.handler.live === 2, 3_000, 'both accepted');
  clock.advance(29_000);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(silent.destroyed, false, 'open at 29 s');
  clock.advance(1_000);
  await waitFor(() => silent.destroyed, 3_000, 'the silent client closed at 30 s');
  assert.equal(talking.destroyed, false);
});
