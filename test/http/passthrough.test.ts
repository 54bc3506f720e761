/**
 * Request heads passed through as the client sent them (HTTP/1.1 client to
 * HTTP/1.1 backend): what the backend receives byte for byte, what is
 * dropped or appended, what is still refused, and that policies reading
 * headers still see them. Real sockets on both sides.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil, waitFor } from '../helpers/net.ts';
import { type HttpBackend, startH1Backend } from './backends.ts';

/**
 * A backend on a plain TCP server that records the bytes of every request it
 * receives and answers each with `200 ok`: a head without a body at its blank
 * line, a chunked body at its last chunk.
 */
class RecordingBackend {
  readonly server: Server;
  readonly requests: string[] = [];
  received = 0;
  readonly #sockets = new Set<Socket>();

  constructor() {
    this.server = createServer((socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      let pending = '';
      socket.on('data', (d: Buffer) => {
        this.received += d.length;
        pending += d.toString('latin1');
        for (;;) {
          const headEnd = pending.indexOf('\r\n\r\n');
          if (headEnd < 0) return;
          let end = headEnd + 4;
          const head = pending.slice(0, end).toLowerCase();
          if (head.includes('transfer-encoding: chunked')) {
            const last = pending.indexOf('\r\n0\r\n\r\n', headEnd);
            if (last < 0) return;
            end = last + 7;
          } else {
            const m = /content-length: (\d+)/.exec(head);
            if (m !== null) {
              end += Number(m[1]);
              if (pending.length < end) return;
            }
          }
          this.requests.push(pending.slice(0, end));
          pending = pending.slice(end);
          socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        }
      });
    });
  }

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return (this.server.address() as { port: number }).port;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    this.server.close();
    await once(this.server, 'close');
  }
}

/** Send `text` on a fresh connection and read until `until` arrives. */
async function exchange(port: number, text: string, until = '\r\n\r\nok'): Promise<string> {
  const socket = await dial(port);
  try {
    socket.write(text, 'latin1');
    return await readUntil(socket, until);
  } finally {
    socket.destroy();
  }
}

describe('HTTP/1.1 request heads passed through', () => {
  let backend: RecordingBackend;
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backend = new RecordingBackend();
    const backendPort = await backend.listen();
    port = await freePort();
    ({ gateway } = await startGateway(`
services:
  - name: raw
    protocol: http
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${backendPort}] }
`));
  });
  after(async () => {
    await gateway.shutdown();
    await backend.close();
  });

  /** Send `heads` on one connection, each once the previous one is answered; what the backend got of them. */
  const inTurn = async (heads: string[]): Promise<string[]> => {
    const before = backend.requests.length;
    const socket = await dial(port);
    let got = '';
    socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
    for (let i = 0; i < heads.length; i++) {
      socket.write(heads[i]!, 'latin1');
      await waitFor(() => got.split('\r\n\r\nok').length - 1 === i + 1);
    }
    socket.destroy();
    return backend.requests.slice(before);
  };

  it('keeps the client’s field lines as they came (case, order, repeated lines), drops hop-by-hop ones, appends forwarding fields', async () => {
    const before = backend.requests.length;
    await exchange(
      port,
      'GET /p?q=1 HTTP/1.1\r\nHost: Example.test\r\nX-Custom: A\r\nConnection: keep-alive\r\ncookie: a=1\r\n' +
        'Keep-Alive: timeout=5\r\nCOOKIE: b=2\r\nProxy-Authorization: secret\r\nTrailer: x\r\nX-Custom:  B  \r\n\r\n',
    );
    await waitFor(() => backend.requests.length > before);
    assert.equal(
      backend.requests[before],
      'GET /p?q=1 HTTP/1.1\r\nHost: Example.test\r\nX-Custom: A\r\ncookie: a=1\r\nCOOKIE: b=2\r\nX-Custom:  B  \r\n' +
        'x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=127.0.0.1;proto=http;host="Example.test"\r\n\r\n',
    );
  });

  it('a body with a Content-Length passes with it; a chunked one is sent chunked, its Transfer-Encoding line this hop’s own', async () => {
    const before = backend.requests.length;
    await exchange(port, 'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello');
    await exchange(
      port,
      'POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nX-B: 2\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    );
    await waitFor(() => backend.requests.length >= before + 2);
    assert.equal(
      backend.requests[before],
      'POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\n' +
        'x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=127.0.0.1;proto=http;host="h"\r\n\r\nhello',
    );
    assert.equal(
      backend.requests[before + 1],
      'POST /b HTTP/1.1\r\nHost: h\r\nX-B: 2\r\n' +
        'x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=127.0.0.1;proto=http;host="h"\r\n' +
        'transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    );
  });

  it('fields named by Connection are dropped; a client’s forwarding fields are appended to, its X-Forwarded-Proto kept', async () => {
    const before = backend.requests.length;
    await exchange(
      port,
      'GET /c HTTP/1.1\r\nHost: h\r\nConnection: X-Drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n',
    );
    await exchange(
      port,
      'GET /d HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n',
    );
    await exchange(port, 'GET /e HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\r\n');
    await waitFor(() => backend.requests.length >= before + 3);
    const lines = (text: string): string[] => text.toLowerCase().split('\r\n');
    const c = lines(backend.requests[before]!);
    assert.ok(!c.some((l) => l.startsWith('x-drop:') || l.startsWith('connection:')), c.join('|'));
    assert.ok(c.includes('x-keep: 2'));
    const d = lines(backend.requests[before + 1]!);
    assert.ok(d.includes('x-forwarded-for: 10.0.0.1, 127.0.0.1'), d.join('|'));
    assert.ok(d.includes('forwarded: for=10.0.0.1, for=127.0.0.1;proto=http;host="h"'), d.join('|'));
    assert.deepEqual(
      d.filter((l) => l.startsWith('x-forwarded-proto:')),
      ['x-forwarded-proto: https'],
    );
    const e = lines(backend.requests[before + 2]!);
    assert.deepEqual(
      e.filter((l) => l.startsWith('x-forwarded-proto:')),
      ['x-forwarded-proto: https'],
    );
    assert.ok(e.includes('x-forwarded-for: 127.0.0.1'));
  });

  it('on one connection, forwarding lines follow each request’s Host and X-Forwarded-Proto', async () => {
    const requests = await inTurn([
      'GET /1 HTTP/1.1\r\nHost: a\r\n\r\n',
      'GET /2 HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n',
      'GET /3 HTTP/1.1\r\nHost: a\r\n\r\n',
      'GET /4 HTTP/1.1\r\nHost: b\r\nX-Forwarded-Proto: https\r\n\r\n',
      'GET /5 HTTP/1.1\r\nHost: b\r\nX-Forwarded-Proto: https\r\n\r\n',
    ]);
    const fwd = (host: string, proto: boolean): string =>
      `x-forwarded-for: 127.0.0.1\r\n${proto ? 'x-forwarded-proto: http\r\n' : ''}` +
      `forwarded: for=127.0.0.1;proto=http;host="${host}"\r\n\r\n`;
    assert.deepEqual(requests, [
      `GET /1 HTTP/1.1\r\nHost: a\r\n${fwd('a', true)}`,
      `GET /2 HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n${fwd('a', false)}`,
      `GET /3 HTTP/1.1\r\nHost: a\r\n${fwd('a', true)}`,
      `GET /4 HTTP/1.1\r\nHost: b\r\nX-Forwarded-Proto: https\r\n${fwd('b', false)}`,
      `GET /5 HTTP/1.1\r\nHost: b\r\nX-Forwarded-Proto: https\r\n${fwd('b', false)}`,
    ]);
  });

  it('an HTTP/1.0 request goes out as HTTP/1.1 with a Host', async () => {
    const before = backend.requests.length;
    await exchange(port, 'GET /old HTTP/1.0\r\nX-Old: 1\r\n\r\n');
    await waitFor(() => backend.requests.length > before);
    const text = backend.requests[before]!;
    assert.match(text, /^GET \/old HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\n/);
    assert.ok(text.includes('x-old: 1\r\n'));
  });

  it('smuggling attempts and malformed heads are refused with 400 and never reach the backend', async () => {
    const bad = [
      'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd',
      'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\nX-B: 2\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\rX-B: 2\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: h\r\nX-A: a\u0000b\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n',
      'GET / HTTP/1.1\r\nX-A: 1\r\n\r\n',
      'GET / HTTP/1.1\nHost: h\r\n\r\n',
      'GET / HTTP/1.2\r\nHost: h\r\n\r\n',
      'GET  / HTTP/1.1\r\nHost: h\r\n\r\n',
    ];
    const received = backend.received;
    for (const text of bad) {
      const reply = await exchange(port, text, '\r\n\r\n');
      assert.match(reply, /^HTTP\/1\.1 400 /, JSON.stringify(text));
    }
    assert.equal(backend.received, received);
  });

  it('requests one after another on one keep-alive connection each reach the backend as their own', async () => {
    const requests = await inTurn([
      'GET /a HTTP/1.1\r\nHost: one.test\r\n\r\n',
      'GET /bb?x=1 HTTP/1.1\r\nHost: two.test\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\n',
      'POST /c HTTP/1.1\r\nHost: two.test\r\nContent-Length: 3\r\n\r\nabc',
      'GET /d HTTP/1.1\r\nHost: one.test\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n',
      'GET /a HTTP/1.1\r\nHost: one.test\r\n\r\n',
    ]);
    const fwd = (host: string): string =>
      `x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=127.0.0.1;proto=http;host="${host}"\r\n\r\n`;
    assert.deepEqual(requests, [
      `GET /a HTTP/1.1\r\nHost: one.test\r\n${fwd('one.test')}`,
      `GET /bb?x=1 HTTP/1.1\r\nHost: two.test\r\nX-A: 1\r\n${fwd('two.test')}`,
      `POST /c HTTP/1.1\r\nHost: two.test\r\nContent-Length: 3\r\n${fwd('two.test')}abc`,
      'GET /d HTTP/1.1\r\nhost: one.test\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n' +
        'forwarded: for=127.0.0.1;proto=http;host="one.test"\r\n\r\n',
      `GET /a HTTP/1.1\r\nHost: one.test\r\n${fwd('one.test')}`,
    ]);
  });

  it('requests and responses of one size in turn on one connection each arrive with their own bytes', async () => {
    // A backend answering each request with its target: heads and responses all of one size, contents differing.
    const echo = createServer((socket) => {
      let pending = '';
      socket.on('data', (d: Buffer) => {
        pending += d.toString('latin1');
        for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
          const target = pending.split(' ')[1]!;
          pending = pending.slice(end + 4);
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${target.length}\r\n\r\n${target}`);
        }
      });
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    const echoPort = (echo.address() as { port: number }).port;
    const gwPort = await freePort();
    const { gateway: gw } = await startGateway(`
services:
  - name: echo
    protocol: http
    listen: 127.0.0.1:${gwPort}
    backends: { static: [127.0.0.1:${echoPort}] }
`);
    const socket = await dial(gwPort);
    try {
      let got = '';
      socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
      for (let i = 100; i < 160; i++) {
        socket.write(`GET /t${i} HTTP/1.1\r\nHost: h\r\n\r\n`, 'latin1');
        await waitFor(() => got.endsWith(`\r\n\r\n/t${i}`));
      }
      assert.equal(got.split('HTTP/1.1 200 OK').length - 1, 60);
    } finally {
      socket.destroy();
      await gw.shutdown();
      echo.close();
    }
  });

  it('a pipelined burst is answered in order, each request passed through whole', async () => {
    const before = backend.requests.length;
    const socket = await dial(port);
    let burst = '';
    for (let i = 0; i < 300; i++) {
      burst +=
        i % 3 === 0
          ? `POST /n${i} HTTP/1.1\r\nHost: h\r\nContent-Length: ${String(i).length}\r\n\r\n${i}`
          : `GET /n${i} HTTP/1.1\r\nHost: h\r\nX-N: ${i}\r\n\r\n`;
    }
    socket.write(burst);
    let got = '';
    socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
    await waitFor(() => got.split('\r\n\r\nok').length - 1 === 300);
    socket.destroy();
    const mine = backend.requests.slice(before);
    assert.equal(mine.length, 300);
    for (let i = 0; i < 300; i++) {
      assert.ok(
        mine[i]!.startsWith(`${i % 3 === 0 ? 'POST' : 'GET'} /n${i} HTTP/1.1\r\nHost: h\r\n`),
        mine[i],
      );
      if (i % 3 === 0) assert.ok(mine[i]!.endsWith(`\r\n\r\n${i}`), mine[i]);
      else assert.ok(mine[i]!.includes(`\r\nX-N: ${i}\r\n`), mine[i]);
    }
  });
});

describe('HTTP/1.1 request heads passed through: policies reading headers', () => {
  const backends: HttpBackend[] = [];
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backends.push(await startH1Backend(), await startH1Backend());
    port = await freePort();
    ({ gateway } = await startGateway(`
services:
  - name: hashed
    protocol: http
    listen: 127.0.0.1:${port}
    balance: maglev
    hashKey: header:x-user
    backends: { static: [${backends.map((b) => `127.0.0.1:${b.port}`).join(', ')}] }
`));
  });
  after(async () => {
    await gateway.shutdown();
    for (const b of backends) await b.close();
  });

  it('a header hash key still sends each user to one backend', async () => {
    const seen = new Map<string, Set<string>>();
    for (let round = 0; round < 3; round++) {
      for (let u = 0; u < 30; u++) {
        const res = await fetch(`http://127.0.0.1:${port}/`, { headers: { 'X-User': `user-${u}` } });
        await res.text();
        const set = seen.get(`user-${u}`) ?? new Set();
        set.add(res.headers.get('x-backend')!);
        seen.set(`user-${u}`, set);
      }
    }
    for (const [user, set] of seen) assert.equal(set.size, 1, `${user} went to ${[...set].join(', ')}`);
    const all = new Set([...seen.values()].flatMap((s) => [...s]));
    assert.equal(all.size, 2, 'thirty users spread over both backends');
  });
});

describe('HTTP/1.1 response heads passed through', () => {
  // A backend answering by target: a length, a chunked body, or a status of its own.
  const answers: Record<string, string> = {
    '/len': 'HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nok',
    '/chunked': 'HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    '/404': 'HTTP/1.1 404 Nope\r\nServer: s\r\nContent-Length: 2\r\n\r\nno',
    '/599': 'HTTP/1.1 599 Odd\r\nServer: s\r\nContent-Length: 2\r\n\r\nno',
  };
  let backend: Server;
  let gateway: Gateway;
  let port: number;
  before(async () => {
    backend = createServer((socket) => {
      let pending = '';
      socket.on('data', (d: Buffer) => {
        pending += d.toString('latin1');
        for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
          const target = pending.split(' ')[1]!;
          pending = pending.slice(end + 4);
          socket.write(answers[target]!, 'latin1');
        }
      });
    });
    backend.listen(0, '127.0.0.1');
    await once(backend, 'listening');
    port = await freePort();
    ({ gateway } = await startGateway(`
services:
  - name: heads
    protocol: http
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${(backend.address() as { port: number }).port}] }
`));
  });
  after(async () => {
    await gateway.shutdown();
    backend.close();
  });

  /** Send `text` on a fresh connection; everything that comes back until `expected`'s length or the close. */
  async function reply(text: string, expected: string): Promise<string> {
    const socket = await dial(port);
    let got = '';
    socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
    socket.write(text, 'latin1');
    let closed = false;
    socket.once('close', () => (closed = true));
    await waitFor(() => closed || got.length >= expected.length, 5_000, JSON.stringify(expected));
    socket.destroy();
    return got;
  }

  it('the status line is this hop’s, the field lines the backend’s, framing and Connection this hop’s, byte for byte', async () => {
    const cases: [string, string][] = [
      ['GET /len HTTP/1.1\r\nHost: h\r\n\r\n', 'HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\nok'],
      [
        'GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n',
        'HTTP/1.1 200 OK\r\nServer: s\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
      ],
      [
        'GET /len HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n',
        'HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok',
      ],
      [
        'GET /len HTTP/1.0\r\nConnection: keep-alive\r\n\r\n',
        'HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\nok',
      ],
      [
        'GET /len HTTP/1.0\r\n\r\n',
        'HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok',
      ],
      // HTTP/1.0 cannot take chunks: the body ends at the close.
      [
        'GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n',
        'HTTP/1.1 200 OK\r\nServer: s\r\nconnection: close\r\n\r\nok',
      ],
      [
        'GET /404 HTTP/1.1\r\nHost: h\r\n\r\n',
        'HTTP/1.1 404 Not Found\r\nServer: s\r\nContent-Length: 2\r\n\r\nno',
      ],
      [
        'GET /599 HTTP/1.1\r\nHost: h\r\n\r\n',
        'HTTP/1.1 599 Unknown\r\nServer: s\r\nContent-Length: 2\r\n\r\nno',
      ],
    ];
    for (const [request, expected] of cases) {
      assert.equal(await reply(request, expected), expected, JSON.stringify(request));
    }
  });
});
