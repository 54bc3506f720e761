/**
 * The raw-socket HTTP/1.1 data plane, edge by edge, with real sockets: pipelining,
 * heads split across segments, chunked bodies with extensions and trailers,
 * bodiless responses, 100-continue, `Connection: close` from either side, and
 * pooled upstream sockets the backend closed.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createH1 } from 'node:http';
import { createServer as createNet, type AddressInfo, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort } from '../helpers/net.ts';
import { type HttpBackend, startH1Backend } from './backends.ts';

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Reads whole HTTP/1.1 responses off a raw socket (Content-Length, chunked, or until close). */
class ResponseReader {
  #buf = Buffer.alloc(0);
  #ended = false;
  #waiters: (() => void)[] = [];
  constructor(socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wake();
    });
    socket.on('end', () => {
      this.#ended = true;
      this.#wake();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake();
    });
  }
  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
  get ended(): boolean {
    return this.#ended;
  }
  async #more(): Promise<void> {
    if (this.#ended) throw new Error(`connection ended; unread: ${JSON.stringify(this.#buf.toString())}`);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for a response')), 5_000);
      this.#waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
  /** Read one response; `head` for a response to HEAD (no body whatever the headers say). */
  async read(head = false): Promise<Reply> {
    let end: number;
    while ((end = this.#buf.indexOf('\r\n\r\n')) < 0) await this.#more();
    const lines = this.#buf.subarray(0, end).toString('latin1').split('\r\n');
    this.#buf = this.#buf.subarray(end + 4);
    const status = Number(lines[0]!.split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    if (status < 200 && status !== 101) return { status, headers, body: '' };
    if (head || status === 204 || status === 304) return { status, headers, body: '' };
    let body = '';
    if (headers['transfer-encoding'] === 'chunked') {
      for (;;) {
        let eol: number;
        while ((eol = this.#buf.indexOf('\r\n')) < 0) await this.#more();
        const size = parseInt(this.#buf.subarray(0, eol).toString(), 16);
        this.#buf = this.#buf.subarray(eol + 2);
        if (size === 0) {
          while (
            (eol = this.#buf.indexOf('\r\n\r\n')) < 0 &&
            !this.#buf.subarray(0, 2).equals(Buffer.from('\r\n'))
          )
            await this.#more();
          const stop = this.#buf.subarray(0, 2).toString() === '\r\n' ? 2 : eol + 4;
          this.#buf = this.#buf.subarray(stop);
          return { status, headers, body };
        }
        while (this.#buf.length < size + 2) await this.#more();
        body += this.#buf.subarray(0, size).toString();
        this.#buf = this.#buf.subarray(size + 2);
      }
    }
    if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      while (this.#buf.length < n) await this.#more();
      body = this.#buf.subarray(0, n).toString();
      this.#buf = this.#buf.subarray(n);
      return { status, headers, body };
    }
    while (!this.#ended) await this.#more().catch(() => {});
    body = this.#buf.toString();
    this.#buf = Buffer.alloc(0);
    return { status, headers, body };
  }
  async closed(): Promise<void> {
    while (!this.#ended) await this.#more().catch(() => {});
  }
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('HTTP/1.1 data plane: framing edges', () => {
  let backend: HttpBackend;
  let gateway: Gateway;
  let port: number;
  let lastHeaders: Record<string, string | string[] | undefined> = {};
  before(async () => {
    backend = await startH1Backend((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      lastHeaders = req.headers;
      if (url.pathname === '/status') {
        req.resume();
        res.writeHead(Number(url.searchParams.get('code')), { 'x-kind': 'bodiless' });
        res.end();
        return true;
      }
      if (url.pathname === '/trailers') {
        req.resume();
        res.writeHead(200, { trailer: 'x-sum' });
        res.write('ab');
        res.write('cd');
        res.addTrailers({ 'x-sum': '4' });
        res.end();
        return true;
      }
      if (url.pathname === '/close') {
        req.resume();
        res.writeHead(200, { connection: 'close', 'content-length': '6' });
        res.end('closed');
        return true;
      }
      if (url.pathname === '/big') {
        req.resume();
        res.end('x'.repeat(200_000));
        return true;
      }
      return false;
    });
    port = await freePort();
    ({ gateway } = await startGateway(`
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    backends:
      static: [127.0.0.1:${backend.port}]
`));
  });
  after(async () => {
    await gateway.shutdown();
    await backend.close();
  });

  it('answers pipelined requests in order on one connection', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write(
      'GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /headers HTTP/1.1\r\nHost: y\r\n\r\n',
    );
    const a = await r.read();
    const b = await r.read();
    const c = await r.read();
    assert.equal(a.status, 200);
    assert.equal(a.body, String(backend.port));
    assert.equal(b.body, 'hello');
    assert.equal((JSON.parse(c.body) as Record<string, string>).host, 'y');
    s.destroy();
  });

  it('parses a request head and body split across many TCP segments', async () => {
    const s = await dial(port);
    s.setNoDelay(true);
    const r = new ResponseReader(s);
    const text = 'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world';
    for (const ch of text) {
      s.write(ch);
      await pause(1);
    }
    const res = await r.read();
    assert.equal(res.status, 200);
    assert.equal(res.body, 'hello world');
    s.destroy();
  });

  it('decodes a chunked request with extensions and trailers, split anywhere', async () => {
    const body = '5;name=value\r\nhello\r\n6 ; x="y"\r\n world\r\n0\r\nx-trailer: t\r\n\r\n';
    const head = 'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n';
    for (const split of [1, 7, head.length + 3, head.length + 20, head.length + body.length - 2]) {
      const s = await dial(port);
      s.setNoDelay(true);
      const r = new ResponseReader(s);
      const all = head + body;
      s.write(all.slice(0, split));
      await pause(5);
      s.write(all.slice(split));
      const res = await r.read();
      assert.equal(res.status, 200, `split at ${split}`);
      assert.equal(res.body, 'hello world', `split at ${split}`);
      s.destroy();
    }
  });

  it('passes a chunked response with trailers through', async () => {
    const s = await dial(port);
    s.write('GET /trailers HTTP/1.1\r\nHost: x\r\n\r\n');
    let text = '';
    s.on('data', (d: Buffer) => (text += d.toString()));
    while (!text.endsWith('\r\n\r\n') || !text.includes('x-sum')) await pause(5);
    assert.match(text, /transfer-encoding: chunked/);
    assert.match(text, /\r\n0\r\nx-sum: 4\r\n\r\n$/);
    s.destroy();
  });

  it('HEAD, 204 and 304 carry no body, and the connection stays in step', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n');
    const h = await r.read(true);
    assert.equal(h.status, 200);
    for (const code of [204, 304]) {
      s.write(`GET /status?code=${code} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const res = await r.read();
      assert.equal(res.status, code);
      assert.equal(res.headers['x-kind'], 'bodiless');
      assert.equal(res.headers['transfer-encoding'], undefined);
    }
    s.write('GET /ok HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await r.read()).body, String(backend.port));
    s.destroy();
  });

  it('Expect: 100-continue gets 100 Continue before the body is sent, and is not forwarded', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n');
    const cont = await r.read();
    assert.equal(cont.status, 100);
    s.write('data');
    const res = await r.read();
    assert.equal(res.status, 200);
    assert.equal((JSON.parse(res.body) as Record<string, string>).expect, undefined);
    assert.equal(lastHeaders['content-length'], '4');
    s.destroy();
  });

  it('an unknown expectation gets 417', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('GET / HTTP/1.1\r\nHost: x\r\nExpect: fancy\r\n\r\n');
    assert.equal((await r.read()).status, 417);
    s.destroy();
  });

  it('Connection: close from the client: the response says close and the connection ends', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    const res = await r.read();
    assert.equal(res.status, 200);
    assert.equal(res.headers.connection, 'close');
    await r.closed();
  });

  it('a client that half-closes after its requests still gets every response, then the close', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.end('GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await r.read()).status, 200);
    assert.equal((await r.read()).status, 200);
    await r.closed();
  });

  it('HTTP/1.0: close by default, keep-alive when asked, never chunked', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('GET /trailers HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    const res = await r.read();
    assert.equal(res.status, 200);
    assert.equal(res.headers['transfer-encoding'], undefined);
    assert.equal(res.body, 'abcd');
    await r.closed(); // no length: the body ended with the connection
    const s2 = await dial(port);
    const r2 = new ResponseReader(s2);
    s2.write('GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    const ka = await r2.read();
    assert.equal(ka.headers.connection, 'keep-alive');
    s2.write('GET / HTTP/1.0\r\n\r\n');
    const last = await r2.read();
    assert.equal(last.headers.connection, 'close');
    await r2.closed();
  });

  it('Connection: close from the backend does not reach the client; the next request opens a new upstream socket', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('GET /close HTTP/1.1\r\nHost: x\r\n\r\n');
    const res = await r.read();
    assert.equal(res.body, 'closed');
    assert.equal(res.headers.connection, undefined);
    s.write('GET /close HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await r.read()).body, 'closed');
    s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await r.read()).body, String(backend.port));
    assert.equal(r.ended, false);
    s.destroy();
  });

  it('streams a response larger than one segment', async () => {
    const s = await dial(port);
    const r = new ResponseReader(s);
    s.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal((await r.read()).body.length, 200_000);
    s.destroy();
  });

  it('rejects obs-fold, a space before the colon, a bare LF and a missing Host with 400', async () => {
    for (const text of [
      'GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n',
      'GET / HTTP/1.1\r\nHost : x\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: x\nX-B: 1\r\n\r\n',
      'GET / HTTP/1.1\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
      'GET / HTTP/2.0\r\nHost: x\r\n\r\n',
    ]) {
      const s = await dial(port);
      const r = new ResponseReader(s);
      s.write(text);
      assert.equal((await r.read()).status, 400, JSON.stringify(text));
      await r.closed();
    }
  });
});

/**
 * A raw backend that answers `ok` with keep-alive, and on the Nth request of a
 * connection closes it without answering: what a backend's idle timeout
 * racing with a reused pooled socket looks like.
 */
async function startFlakyBackend(
  closeOn: number,
): Promise<{ port: number; server: Server; requests: number }> {
  const state = { port: 0, server: createNet(), requests: 0 };
  state.server.on('connection', (socket: Socket) => {
    let n = 0;
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let end: number;
      while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
        const head = buf.slice(0, end);
        const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        buf = buf.slice(end + 4 + len);
        n++;
        state.requests++;
        if (n === closeOn) {
          socket.destroy();
          return;
        }
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      }
    });
    socket.on('error', () => {});
  });
  state.server.listen(0, '127.0.0.1');
  await once(state.server, 'listening');
  state.port = (state.server.address() as AddressInfo).port;
  return state;
}

describe('HTTP/1.1 upstream pool', () => {
  it('a pooled socket the backend closed: an idempotent request is sent again on a fresh socket', async () => {
    const flaky = await startFlakyBackend(2);
    const port = await freePort();
    const { gateway } = await startGateway(`
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    retries: 0
    upstream: { connectionsPerBackend: 1 }
    backends:
      static: [127.0.0.1:${flaky.port}]
`);
    try {
      const s = await dial(port);
      const r = new ResponseReader(s);
      s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal((await r.read()).body, 'ok');
      s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      const again = await r.read();
      assert.equal(again.status, 200, 'resent on a new socket even with retries: 0');
      assert.equal(again.body, 'ok');
      assert.equal(flaky.requests, 3);
      // A POST with a body was sent and may have been acted on: 502, not sent twice.
      s.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi');
      const post = await r.read();
      assert.equal(post.status, 502);
      assert.equal(post.headers['x-holdfast-error'], 'upstream-reset');
      assert.equal(flaky.requests, 4);
      s.destroy();
    } finally {
      await gateway.shutdown();
      flaky.server.close();
    }
  });

  it('a request with a body whose connection failed is retried on another backend, body intact', async () => {
    const live = await startH1Backend();
    const [port, dead] = [await freePort(), await freePort()];
    const { gateway } = await startGateway(`
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    balance: round-robin
    backends:
      static: [127.0.0.1:${dead}, 127.0.0.1:${live.port}]
`);
    try {
      for (let i = 0; i < 6; i++) {
        const s = await dial(port);
        const r = new ResponseReader(s);
        s.write('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload');
        const res = await r.read();
        assert.equal(res.status, 200, `attempt ${i}`);
        assert.equal(res.body, 'payload');
        s.destroy();
      }
    } finally {
      await gateway.shutdown();
      await live.close();
    }
  });

  it('requests beyond connectionsPerBackend wait for a free socket', async () => {
    let open = 0;
    let most = 0;
    const server = createH1((req, res) => {
      req.resume();
      setTimeout(() => res.end('ok'), 20);
    });
    server.on('connection', (s: Socket) => {
      open++;
      most = Math.max(most, open);
      s.once('close', () => open--);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = await freePort();
    const { gateway } = await startGateway(`
services:
  - name: web
    protocol: http
    listen: 127.0.0.1:${port}
    upstream: { connectionsPerBackend: 2 }
    backends:
      static: [127.0.0.1:${(server.address() as AddressInfo).port}]
`);
    try {
      const results = await Promise.all(
        Array.from({ length: 8 }, async () => {
          const s = await dial(port);
          const r = new ResponseReader(s);
          s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
          const res = await r.read();
          s.destroy();
          return res.body;
        }),
      );
      assert.deepEqual(results, Array(8).fill('ok'));
      assert.ok(most <= 2, `at most 2 upstream sockets (saw ${most})`);
    } finally {
      await gateway.shutdown();
      server.closeAllConnections();
      server.close();
    }
  });
});
