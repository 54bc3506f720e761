/**
 * HTTP/2 floods end the offending session, boundedly, and only that one:
 * rapid reset (streams opened and cancelled at once) gets GOAWAY
 * ENHANCE_YOUR_CALM; a CONTINUATION flood is cut by nghttp2's limit on
 * CONTINUATION frames (GOAWAY, then close). Other sessions carry on.
 */
import assert from 'node:assert/strict';
import { connect, constants as h2c } from 'node:http2';
import { describe, it } from 'node:test';
import { dial } from '../helpers/net.ts';
import { h2Status, useHttpService } from './backends.ts';

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** HPACK literal field without indexing, new name (RFC 7541 §6.2.2), short strings. */
function literal(name: string, value: string): Buffer {
  return Buffer.concat([
    Buffer.from([0x00, name.length]),
    Buffer.from(name),
    Buffer.from([value.length]),
    Buffer.from(value),
  ]);
}

/** GOAWAY error codes in a stream of frames from the server. */
function goawayCodes(bytes: Buffer): number[] {
  const codes: number[] = [];
  for (let i = 0; i + 9 <= bytes.length;) {
    const len = bytes.readUIntBE(i, 3);
    if (bytes[i + 3] === 7 && i + 17 <= bytes.length) codes.push(bytes.readUInt32BE(i + 13));
    i += 9 + len;
  }
  return codes;
}

describe('HTTP/2 flood guards', () => {
  const svc = useHttpService('web');
  const errors = (): Record<string, number> => svc.gateway.services.get('web')!.handler.stats.errors ?? {};

  it('rapid reset: GOAWAY ENHANCE_YOUR_CALM after a bounded number of resets; another session is unaffected', async () => {
    const good = connect(`http://127.0.0.1:${svc.port}`);
    const bad = connect(`http://127.0.0.1:${svc.port}`);
    bad.on('error', () => {});
    try {
      assert.equal(await h2Status(good, '/'), 200);
      const goaway = new Promise<number>((resolve) => bad.once('goaway', (code: number) => resolve(code)));
      let opened = 0;
      for (let i = 0; i < 5_000 && !bad.destroyed && !bad.closed; i++) {
        const req = bad.request({ ':path': '/slow?ms=2000' });
        req.on('error', () => {});
        req.close(h2c.NGHTTP2_CANCEL);
        opened++;
        if (i % 50 === 0) await new Promise((r) => setImmediate(r));
      }
      assert.equal(await goaway, h2c.NGHTTP2_ENHANCE_YOUR_CALM);
      assert.ok(opened < 1_000, `cut after ${opened} streams`);
      assert.equal(errors()['h2-rapid-reset'], 1);
      assert.equal(await h2Status(good, '/'), 200, 'the other session still works');
    } finally {
      bad.destroy();
      good.close();
    }
  });

  it('CONTINUATION flood: the session is closed after a bounded number of frames; another session is unaffected', async () => {
    const good = connect(`http://127.0.0.1:${svc.port}`);
    const s = await dial(svc.port);
    try {
      assert.equal(await h2Status(good, '/'), 200);
      let got = Buffer.alloc(0);
      s.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
      const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
      s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      s.write(frame(4, 0, 0, Buffer.alloc(0))); // SETTINGS
      // HEADERS (:method GET, :path /, :scheme http) without END_HEADERS, then CONTINUATION after CONTINUATION.
      s.write(frame(1, 0x1, 1, Buffer.from([0x82, 0x84, 0x86])));
      let sent = 0;
      for (; sent < 100_000 && !s.destroyed && s.writable; sent++) {
        s.write(frame(9, 0, 1, literal('x-a', 'b')));
        if (sent % 100 === 0) await new Promise((r) => setImmediate(r));
      }
      await closed;
      assert.ok(sent < 100_000, `the proxy closed the connection (after ${sent} frames written)`);
      const codes = goawayCodes(got);
      assert.equal(codes.length, 1, 'one GOAWAY before the close');
      assert.ok(
        (errors()['h2-continuation-flood'] ?? 0) + (errors()['h2-session-error'] ?? 0) >= 1,
        'counted',
      );
      assert.equal(await h2Status(good, '/'), 200, 'the other session still works');
    } finally {
      s.destroy();
      good.close();
    }
  });
});
