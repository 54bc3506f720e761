/**
 * HTTP/2 client sessions that carry no stream for `clientIdle` get GOAWAY
 * (NO_ERROR) and close; a session whose stream waits on a slow backend is not
 * idle, and neither is one that keeps starting streams.
 */
import assert from 'node:assert/strict';
import { connect, constants as h2c, type ClientHttp2Session } from 'node:http2';
import { describe, it } from 'node:test';
import { useHttpService } from './backends.ts';

function get(session: ClientHttp2Session, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': path });
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

describe('HTTP/2 clientIdle', () => {
  const svc = useHttpService('idle2', '    httpTimeouts: { clientIdle: 300ms }\n');

  it('an idle session gets GOAWAY NO_ERROR after clientIdle; one waiting for a slow response, or busy, does not', async () => {
    const idle = connect(`http://127.0.0.1:${svc.port}`);
    const slow = connect(`http://127.0.0.1:${svc.port}`);
    const busy = connect(`http://127.0.0.1:${svc.port}`);
    const goaways = new Map<ClientHttp2Session, number>();
    for (const s of [idle, slow, busy]) {
      s.on('error', () => {});
      s.on('goaway', (code: number) => goaways.set(s, code));
    }
    try {
      assert.equal(await get(idle, '/'), String(svc.backend.port));
      const idleSince = Date.now();
      const closed = new Promise<void>((resolve) => idle.once('close', () => resolve()));
      // Whether the slow session had GOAWAY by the time its response arrived.
      const slowBody = get(slow, '/slow?ms=900').then((body) => [body, goaways.has(slow)] as const);
      // A request every 100 ms keeps `busy` from being idle.
      const until = Date.now() + 900;
      while (Date.now() < until) {
        assert.equal(await get(busy, '/'), String(svc.backend.port));
        await new Promise((r) => setTimeout(r, 100));
      }
      await closed;
      const took = Date.now() - idleSince;
      assert.equal(goaways.get(idle), h2c.NGHTTP2_NO_ERROR);
      assert.ok(took >= 250 && took < 2_000, `closed after ${took} ms`);
      // The slow stream outlived clientIdle and still got its answer; the busy session is open.
      assert.deepEqual(await slowBody, [String(svc.backend.port), false]);
      assert.equal(goaways.has(busy), false, 'the busy session got no GOAWAY');
      assert.equal(busy.closed, false);
    } finally {
      for (const s of [idle, slow, busy]) s.destroy();
    }
  });
});
