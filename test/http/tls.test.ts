/**
 * `tls:` on a `protocol: http` service: one port, ALPN picks h2 or http/1.1,
 * and both reach the backend with `X-Forwarded-Proto: https`. The certificate
 * is made here with `openssl`; without it the test is skipped.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { type ClientHttp2Session, connect as h2connect } from 'node:http2';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { after, describe, it } from 'node:test';
import { blockCounts } from '../../src/proxy/h2/blocks.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, waitFor } from '../helpers/net.ts';
import { WebSocket } from 'ws';
import { startWsBackend } from '../websocket/helpers.ts';
import { startH1Backend } from './backends.ts';
import { makeCert } from '../helpers/tls.ts';

/** One certificate for every test here (or why there is none). */
const made = makeCert();
after(() => {
  if (typeof made !== 'string') rmSync(made.dir, { recursive: true, force: true });
});

/**
 * A gateway with one `protocol: http` service over TLS (this file's
 * certificate) in front of the backend on `backendPort`; `extra`: more
 * field lines for the service.
 */
async function tlsGateway(
  name: string,
  port: number,
  backendPort: number,
  extra = '',
): Promise<Awaited<ReturnType<typeof startGateway>>> {
  if (typeof made === 'string') throw new Error(made);
  return startGateway(`
services:
  - name: ${name}
    protocol: http
    listen: 127.0.0.1:${port}${extra}
    tls: { cert: ${made.cert}, key: ${made.key} }
    backends: { static: [127.0.0.1:${backendPort}] }
`);
}

describe('TLS with ALPN', () => {
  it(
    'serves h2 and http/1.1 on one port, chosen by ALPN',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const backend = await startH1Backend();
      const port = await freePort();
      const { gateway } = await tlsGateway('secure', port, backend.port);
      try {
        // HTTP/1.1 (ALPN http/1.1).
        const h1 = await new Promise<{ alpn: string | false | null; body: string }>((resolve, reject) => {
          const req = httpsRequest(
            {
              host: '127.0.0.1',
              port,
              path: '/headers',
              rejectUnauthorized: false,
              agent: false,
              // node:https takes the TLS options of tls.connect too (its types do not list them)
              ...({ ALPNProtocols: ['http/1.1'] } as object),
            },
            (res) => {
              const socket = res.socket;
              const alpn = socket instanceof TLSSocket ? socket.alpnProtocol : 'not TLS';
              let body = '';
              res.on('data', (d: Buffer) => (body += d.toString()));
              res.on('end', () => resolve({ alpn, body }));
            },
          );
          req.on('error', reject);
          req.end();
        });
        assert.equal(h1.alpn, 'http/1.1');
        assert.equal((JSON.parse(h1.body) as Record<string, string>)['x-forwarded-proto'], 'https');

        // HTTP/2 (ALPN h2).
        const session = h2connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
        try {
          const h2 = await new Promise<{ status: unknown; body: string }>((resolve, reject) => {
            const req = session.request({ ':path': '/headers' });
            let body = '';
            let status: unknown;
            req.on('response', (h) => (status = h[':status']));
            req.on('data', (d: Buffer) => (body += d.toString()));
            req.on('end', () => resolve({ status, body }));
            req.on('error', reject);
          });
          const h2socket = session.socket;
          assert.ok(h2socket instanceof TLSSocket);
          assert.equal(h2socket.alpnProtocol, 'h2');
          assert.equal(h2.status, 200);
          assert.equal((JSON.parse(h2.body) as Record<string, string>)['x-forwarded-proto'], 'https');
        } finally {
          session.close();
        }
      } finally {
        await gateway.shutdown();
        await backend.close();
      }
    },
  );

  it(
    'proxies WebSocket over TLS (wss) with X-Forwarded-Proto: https, small and large messages intact',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const port = await freePort();
      const backend = await startWsBackend();
      const { gateway } = await tlsGateway('secure-ws', port, backend.port);
      const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { rejectUnauthorized: false });
      try {
        ws.on('error', () => {});
        await once(ws, 'message'); // the backend's greeting
        assert.equal(backend.requests.at(-1)?.['x-forwarded-proto'], 'https');
        assert.match(String(backend.requests.at(-1)?.forwarded), /proto=https/);
        const sent = [randomBytes(10), randomBytes(300_000), randomBytes(70_000)];
        const got: Buffer[] = [];
        const all = new Promise<void>((resolve) =>
          ws.on('message', (m: Buffer) => {
            got.push(m);
            if (got.length === sent.length) resolve();
          }),
        );
        for (const m of sent) ws.send(m);
        await all;
        for (let i = 0; i < sent.length; i++) assert.ok(got[i]!.equals(sent[i]!), `message ${i} differs`);
      } finally {
        ws.terminate();
        await gateway.shutdown();
        await backend.close();
      }
    },
  );
});

describe('HTTP/2: the balancer sees the request as the client sent it', () => {
  it(
    'a maglev hash on X-Forwarded-For reads the value the client sent, not the one this hop forwards, over TLS and cleartext',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const backends = [await startH1Backend(), await startH1Backend()];
      const [tlsPort, plainPort] = [await freePort(), await freePort()];
      const service = (name: string, port: number, tls: string): string => `
  - name: ${name}
    protocol: http
    listen: 127.0.0.1:${port}${tls}
    balance: maglev
    hashKey: header:x-forwarded-for
    backends: { static: [${backends.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }`;
      const { gateway } = await startGateway(`
services:${service('tls', tlsPort, `\n    tls: { cert: ${made.cert}, key: ${made.key} }`)}${service('plain', plainPort, '')}
`);
      /** The backend that answers `headers` on a new session to `url`, and what it was forwarded. */
      const ask = async (
        url: string,
        headers: Record<string, string>,
      ): Promise<{ backend: string; forwarded: Record<string, string> }> => {
        const session = h2connect(url, { rejectUnauthorized: false });
        try {
          return await new Promise((resolve, reject) => {
            const req = session.request({ ':path': '/headers', ...headers });
            let backend = '';
            let body = '';
            req.on('response', (h) => (backend = String(h['x-backend'])));
            req.on('data', (d: Buffer) => (body += d.toString()));
            req.on('end', () => resolve({ backend, forwarded: JSON.parse(body) as Record<string, string> }));
            req.on('error', reject);
          });
        } finally {
          session.close();
        }
      };
      try {
        for (const url of [`https://127.0.0.1:${tlsPort}`, `http://127.0.0.1:${plainPort}`]) {
          // A client (or the proxy before us) that sends X-Forwarded-For: its value is the key.
          const byKey = new Map<string, string>();
          for (let round = 0; round < 2; round++) {
            for (let u = 0; u < 16; u++) {
              const key = `10.0.0.${u}`;
              const got = await ask(url, { 'x-forwarded-for': key });
              assert.equal(got.forwarded['x-forwarded-for'], `${key}, 127.0.0.1`, 'this hop appends itself');
              if (round === 0) byKey.set(key, got.backend);
              else assert.equal(got.backend, byKey.get(key), `${url}: ${key} stays on its backend`);
            }
          }
          assert.equal(new Set(byKey.values()).size, 2, `${url}: the keys spread over both backends`);
          // A client that sends none: no key (each connection hashed on its own), though the backend is
          // forwarded X-Forwarded-For: 127.0.0.1 — which, were it the key, would send all of them to one backend.
          const seen = new Set<string>();
          for (let i = 0; i < 24; i++) {
            const got = await ask(url, {});
            assert.equal(got.forwarded['x-forwarded-for'], '127.0.0.1');
            seen.add(got.backend);
          }
          assert.equal(seen.size, 2, `${url}: requests without the header are not all keyed alike`);
        }
      } finally {
        await gateway.shutdown();
        for (const b of backends) await b.close();
      }
    },
  );
});

describe('maglev on the TLS server name (hashKey: sni)', () => {
  it(
    'each server name keeps its backend over HTTP/1.1, HTTP/2 and WebSocket, and the names spread over the backends',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const h1 = [await startH1Backend(), await startH1Backend()];
      const ws = [await startWsBackend(), await startWsBackend()];
      const [httpPort, wsPort] = [await freePort(), await freePort()];
      const service = (name: string, port: number, backends: { port: number }[]): string => `
  - name: ${name}
    protocol: http
    listen: 127.0.0.1:${port}
    tls: { cert: ${made.cert}, key: ${made.key} }
    balance: maglev
    hashKey: sni
    backends: { static: [${backends.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }`;
      const { gateway } = await startGateway(`
services:${service('requests', httpPort, h1)}${service('sockets', wsPort, ws)}
`);
      /** The backend port that answers a request on a new connection made with `servername`. */
      const viaH1 = (servername: string): Promise<string> =>
        new Promise((resolve, reject) => {
          const req = httpsRequest(
            {
              host: '127.0.0.1',
              port: httpPort,
              path: '/',
              servername,
              rejectUnauthorized: false,
              agent: false,
            },
            (res) => {
              res.resume();
              resolve(String(res.headers['x-backend']));
            },
          );
          req.on('error', reject);
          req.end();
        });
      const viaH2 = async (servername: string): Promise<string> => {
        const session = h2connect(`https://127.0.0.1:${httpPort}`, { servername, rejectUnauthorized: false });
        try {
          return await new Promise((resolve, reject) => {
            const req = session.request({ ':path': '/' });
            req.on('response', (h) => resolve(String(h['x-backend'])));
            req.on('error', reject);
            req.resume();
          });
        } finally {
          session.close();
        }
      };
      const viaWs = async (servername: string): Promise<string> => {
        // ws hands TLS options to tls.connect (its types do not list servername).
        const socket = new WebSocket(`wss://127.0.0.1:${wsPort}/`, {
          rejectUnauthorized: false,
          ...({ servername } as object),
        });
        try {
          socket.on('error', () => {});
          const [greeting] = (await once(socket, 'message')) as [Buffer];
          return /hello from (\d+)/.exec(greeting.toString())?.[1] ?? '';
        } finally {
          socket.terminate();
        }
      };
      try {
        const names = Array.from({ length: 16 }, (_, i) => `tenant-${i}.example.test`);
        for (const [label, via] of [
          ['HTTP/1.1', viaH1],
          ['HTTP/2', viaH2],
          ['WebSocket', viaWs],
        ] as const) {
          const placed = new Map<string, string>();
          for (const name of names) placed.set(name, await via(name));
          for (const name of names)
            assert.equal(await via(name), placed.get(name), `${label}: ${name} stays`);
          assert.equal(new Set(placed.values()).size, 2, `${label}: the names spread over both backends`);
        }
      } finally {
        await gateway.shutdown();
        for (const b of [...h1, ...ws]) await b.close();
      }
    },
  );
});

describe('TLS handshake bound', () => {
  it(
    'a client that never finishes its handshake is closed 10 s after it connected, even one that trickles bytes',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const backend = await startH1Backend();
      const port = await freePort();
      const { gateway } = await tlsGateway(
        'secure',
        port,
        backend.port,
        '\n    limits: { maxConnections: 10 }',
      );
      // Node's handshake timer runs in real time (see HANDSHAKE_TIMEOUT_MS in src/proxy/http.ts).
      const closedAfter = async (s: Socket): Promise<number> => {
        const start = Date.now();
        s.on('error', () => {});
        await once(s, 'close');
        return Date.now() - start;
      };
      const silent = await dial(port);
      const trickling = await dial(port);
      // The start of a ClientHello record, a byte every half second.
      const hello = Buffer.from('16030100c8010000c40303', 'hex');
      let sent = 0;
      const trickle = setInterval(() => {
        if (sent < hello.length && trickling.writable) trickling.write(hello.subarray(sent, ++sent));
      }, 500);
      try {
        const [a, b] = await Promise.all([closedAfter(silent), closedAfter(trickling)]);
        for (const ms of [a, b]) assert.ok(ms >= 9_500 && ms < 12_000, `closed after ${ms} ms`);
        await waitFor(() => gateway.services.get('secure')!.handler.live === 0, 2_000, 'no longer counted');
      } finally {
        clearInterval(trickle);
        silent.destroy();
        trickling.destroy();
        await gateway.shutdown();
        await backend.close();
      }
    },
  );
});

describe('HTTP/2 over TLS: quiet connections', () => {
  it(
    'an idle connection holds no output block once its writes are sent',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const backend = await startH1Backend();
      const port = await freePort();
      const { gateway } = await tlsGateway('secure', port, backend.port);
      const sessions: ClientHttp2Session[] = [];
      try {
        const before = blockCounts();
        for (let i = 0; i < 5; i++) {
          const session = h2connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
          sessions.push(session);
          const status = await new Promise<unknown>((resolve, reject) => {
            const req = session.request({ ':path': '/headers' });
            let s: unknown;
            req.on('response', (h) => (s = h[':status']));
            req.on('end', () => resolve(s));
            req.on('error', reject);
            req.resume();
          });
          assert.equal(status, 200);
        }
        // Every block the five connections took (their SETTINGS, the responses) is back in the pool.
        const out = (): number => {
          const now = blockCounts();
          return now.made - before.made - (now.free - before.free);
        };
        await waitFor(() => out() === 0, 2000, 'blocks back in the pool').catch(() => {
          assert.fail(`${out()} blocks still held by 5 idle connections`);
        });
      } finally {
        for (const s of sessions) s.close();
        await gateway.shutdown();
        await backend.close();
      }
    },
  );
});
