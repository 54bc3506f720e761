/**
 * `tls:` on a `protocol: http` service: one port, ALPN picks h2 or http/1.1,
 * and both reach the backend with `X-Forwarded-Proto: https`. The certificate
 * is made here with `openssl`; without it the test is skipped.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect as h2connect } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { after, describe, it } from 'node:test';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';
import { WebSocket } from 'ws';
import { startWsBackend } from '../websocket/helpers.ts';
import { startH1Backend } from './backends.ts';

function makeCert(): { dir: string; cert: string; key: string } | string {
  const dir = mkdtempSync(join(tmpdir(), 'holdfast-tls-'));
  const cert = join(dir, 'tls.crt');
  const key = join(dir, 'tls.key');
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
    ],
    { encoding: 'utf8' },
  );
  if (r.error !== undefined || r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return `openssl is not available (${r.error?.message ?? r.stderr.trim()}); install it to run the TLS test`;
  }
  return { dir, cert, key };
}

describe('TLS with ALPN', () => {
  const made = makeCert();
  after(() => {
    if (typeof made !== 'string') rmSync(made.dir, { recursive: true, force: true });
  });
  it(
    'serves h2 and http/1.1 on one port, chosen by ALPN',
    { skip: typeof made === 'string' ? made : false },
    async () => {
      if (typeof made === 'string') return;
      const backend = await startH1Backend();
      const port = await freePort();
      const { gateway } = await startGateway(`
services:
  - name: secure
    protocol: http
    listen: 127.0.0.1:${port}
    tls: { cert: ${made.cert}, key: ${made.key} }
    backends:
      static: [127.0.0.1:${backend.port}]
`);
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
      const { gateway } = await startGateway(`
services:
  - name: secure-ws
    protocol: http
    listen: 127.0.0.1:${port}
    tls: { cert: ${made.cert}, key: ${made.key} }
    backends:
      static: [127.0.0.1:${backend.port}]
`);
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
