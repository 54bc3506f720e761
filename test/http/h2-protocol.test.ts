/**
 * holdfast's own HTTP/2 server side (src/proxy/h2) through a real gateway:
 * flow control both ways with node:http2 clients, and, over raw sockets, the
 * RST_STREAM or GOAWAY each kind of malformed input gets (RFC 9113), the
 * header limits (431), and the flood guards (GOAWAY ENHANCE_YOUR_CALM).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect as h2connect } from 'node:http2';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';
import type { Gateway } from '../../src/gateway.ts';
import { blockCounts } from '../../src/proxy/h2/blocks.ts';
import * as F from '../../src/proxy/h2/frames.ts';
import { HpackDecoder } from '../../src/proxy/h2/hpack.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, waitFor } from '../helpers/net.ts';
import { type HttpBackend, startH1Backend } from './backends.ts';

/** Deterministic body bytes. */
function pattern(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + (i >> 11)) & 0xff;
  return b;
}
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Body bytes that never repeat (distinct 32-bit words): a misplaced or stale piece cannot look right. */
function unique(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let k = 0; k + 4 <= n; k += 4)
    b.writeUInt32LE(Math.imul((k >> 2) ^ (seed << 24), 0x9e3779b1) >>> 0, k);
  return b;
}
/** Sizes the /pieces route writes in turn: below and above the size the proxy copies next to its frame header. */
const PIECES = [300, 1800, 2500, 7000, 16_000, 40_000, 900, 2048, 2049];
const PIECES_TOTAL = 1 << 20;
const BIG = 5 * 1024 * 1024;
const BIG_BODY = pattern(BIG);

interface Frame {
  type: number;
  flags: number;
  id: number;
  payload: Buffer;
}

/** HPACK integer with an N-bit prefix. */
function hint(first: number, prefix: number, v: number): number[] {
  const mask = (1 << prefix) - 1;
  if (v < mask) return [first | v];
  const out = [first | mask];
  v -= mask;
  while (v >= 128) {
    out.push((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out.push(v);
  return out;
}

/** A header block of literals without indexing (new names), as a test client writes it. */
function block(fields: [string, string][]): Buffer {
  const parts: Buffer[] = [];
  for (const [n, v] of fields) {
    parts.push(Buffer.from([0x00, ...hint(0, 7, n.length)]), Buffer.from(n, 'latin1'));
    parts.push(Buffer.from(hint(0, 7, v.length)), Buffer.from(v, 'latin1'));
  }
  return Buffer.concat(parts);
}

const POST = (path: string): [string, string][] => [
  [':method', 'POST'],
  [':scheme', 'http'],
  [':path', path],
  [':authority', 'test'],
];

const GET = (path = '/'): [string, string][] => [
  [':method', 'GET'],
  [':scheme', 'http'],
  [':path', path],
  [':authority', 'test'],
];

function settingsPayload(pairs: [number, number][]): Buffer {
  const b = Buffer.alloc(pairs.length * 6);
  pairs.forEach(([k, v], i) => {
    b.writeUInt16BE(k, i * 6);
    b.writeUInt32BE(v, i * 6 + 2);
  });
  return b;
}

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};

/** A hand-driven HTTP/2 client connection. */
class Raw {
  readonly socket: Socket;
  readonly frames: Frame[] = [];
  #buf = Buffer.alloc(0);
  closed = false;
  #waiters: (() => void)[] = [];
  readonly hpack = new HpackDecoder();
  /** DATA payload bytes received, per stream; with `dropData` their payloads are not kept. */
  readonly dataBytes = new Map<number, number>();
  dropData = false;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      while (this.#buf.length >= 9) {
        const len = this.#buf.readUIntBE(0, 3);
        if (this.#buf.length < 9 + len) break;
        const type = this.#buf[3]!;
        const sid = this.#buf.readUInt32BE(5) & 0x7fffffff;
        if (type === F.DATA) this.dataBytes.set(sid, (this.dataBytes.get(sid) ?? 0) + len);
        if (type === F.DATA && this.dropData && (this.#buf[4]! & F.FLAG_END_STREAM) === 0) {
          this.#buf = this.#buf.subarray(9 + len);
          continue;
        }
        this.frames.push({
          type: this.#buf[3]!,
          flags: this.#buf[4]!,
          id: this.#buf.readUInt32BE(5) & 0x7fffffff,
          payload: this.#buf.subarray(9, 9 + len),
        });
        this.#buf = this.#buf.subarray(9 + len);
      }
      this.#wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#wake();
    });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const fn of w) fn();
  }

  static async open(port: number, settings: [number, number][] = [], withSettings = true): Promise<Raw> {
    const raw = new Raw(await dial(port));
    raw.socket.write(F.PREFACE);
    if (withSettings) raw.send(F.SETTINGS, 0, 0, settingsPayload(settings));
    return raw;
  }

  send(type: number, flags: number, id: number, payload: Buffer = Buffer.alloc(0)): void {
    if (!this.socket.destroyed) this.socket.write(F.frame(type, flags, id, payload));
  }

  request(id: number, fields: [string, string][], endStream = true): void {
    this.send(F.HEADERS, F.FLAG_END_HEADERS | (endStream ? F.FLAG_END_STREAM : 0), id, block(fields));
  }

  async next(pred: (f: Frame) => boolean, ms = 3000): Promise<Frame | undefined> {
    const deadline = Date.now() + ms;
    for (;;) {
      const f = this.frames.find(pred);
      if (f !== undefined) return f;
      if (this.closed || Date.now() > deadline) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async goaway(): Promise<number | undefined> {
    const f = await this.next((f) => f.type === F.GOAWAY);
    return f?.payload.readUInt32BE(4);
  }

  async rst(id: number): Promise<number | undefined> {
    const f = await this.next((f) => f.type === F.RST_STREAM && f.id === id);
    return f?.payload.readUInt32BE(0);
  }

  /** The :status of the response on stream `id`. */
  async status(id: number): Promise<string | undefined> {
    const f = await this.next((f) => f.type === F.HEADERS && f.id === id);
    if (f === undefined) return undefined;
    let status: string | undefined;
    this.hpack.decode(f.payload, 0, f.payload.length, {
      field: (n, v) => {
        if (n === ':status') status = v;
      },
    });
    return status;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Run `fn` on a fresh raw connection to `port`, closed afterwards whatever happens. */
async function withRaw(port: number, fn: (raw: Raw) => Promise<void>): Promise<void> {
  const raw = await Raw.open(port);
  try {
    await fn(raw);
  } finally {
    raw.close();
  }
}

describe('HTTP/2 server side', () => {
  let backend: HttpBackend;
  let gateway: Gateway;
  let port: number;
  let hugeDone = false;
  const errors = (): Record<string, number> => gateway.services.get('h2')!.handler.stats.errors ?? {};

  before(async () => {
    backend = await startH1Backend((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/big') {
        req.resume();
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        // In pieces, so the proxy sees a stream of chunks.
        let off = 0;
        const more = (): void => {
          while (off < BIG) {
            const ok = res.write(BIG_BODY.subarray(off, off + 100_000));
            off += 100_000;
            if (!ok) return void res.once('drain', more);
          }
          res.end();
        };
        more();
        return true;
      }
      if (url.pathname === '/huge') {
        // 64 MB, as fast as the proxy takes it; `hugeDone` says when the backend wrote it all.
        req.resume();
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const mb = Buffer.alloc(1 << 20, 0x61);
        let left = 64;
        const more = (): void => {
          while (left > 0) {
            left--;
            if (!res.write(mb)) return void res.once('drain', more);
          }
          res.end(() => (hugeDone = true));
        };
        more();
        return true;
      }
      if (url.pathname === '/pieces') {
        // One write per event-loop turn: the proxy reads them one by one, into its shared read buffer.
        req.resume();
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const body = unique(Number(url.searchParams.get('seed')), PIECES_TOTAL);
        let off = 0;
        let k = 0;
        const more = (): void => {
          if (res.destroyed) return;
          if (off >= PIECES_TOTAL) return void res.end();
          const n = PIECES[k++ % PIECES.length]!;
          const ok = res.write(body.subarray(off, off + n));
          off += n;
          if (ok) setImmediate(more);
          else res.once('drain', more);
        };
        more();
        return true;
      }
      if (url.pathname === '/unique') {
        // `size` bytes of unique(seed), in 100 KB writes that wait for 'drain'.
        req.resume();
        const size = Number(url.searchParams.get('size'));
        const body = unique(Number(url.searchParams.get('seed')), size);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
        let off = 0;
        const more = (): void => {
          while (off < size) {
            const ok = res.write(body.subarray(off, off + 100_000));
            off += 100_000;
            if (!ok) return void res.once('drain', more);
          }
          res.end();
        };
        more();
        return true;
      }
      if (url.pathname === '/te') {
        // Fields that are connection-specific in HTTP/2 (RFC 9113 §8.2.2).
        res.writeHead(200, { te: 'gzip', 'proxy-authenticate': 'Basic', 'x-kept': 'yes' });
        res.end('ok');
        return true;
      }
      if (url.pathname === '/slowsink') {
        // Reads the upload slowly: the proxy must hold the client back, not buffer it all.
        const hash = createHash('sha256');
        let n = 0;
        req.on('data', (d: Buffer) => {
          hash.update(d);
          n += d.length;
          req.pause();
          setTimeout(() => req.resume(), 2);
        });
        req.on('end', () => res.end(`${n} ${hash.digest('hex')}`));
        return true;
      }
      return false;
    });
    port = await freePort();
    ({ gateway } = await startGateway(`
services:
  - name: h2
    protocol: http
    listen: 127.0.0.1:${port}
    headerLimits: { maxSize: 4096, maxCount: 20 }
    http2: { maxConcurrentStreams: 4 }
    backends: { static: [127.0.0.1:${backend.port}] }
`));
  });
  after(async () => {
    await gateway.shutdown();
    await backend.close();
  });

  describe('flow control', () => {
    it('a 5 MB response reaches a client with a 64 KB window that reads slowly, intact', async () => {
      const session = h2connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 65_535 } });
      try {
        const got = await new Promise<Buffer>((resolve, reject) => {
          const req = session.request({ ':path': '/big' });
          const chunks: Buffer[] = [];
          req.on('data', (d: Buffer) => {
            chunks.push(d);
            req.pause();
            setTimeout(() => req.resume(), 1);
          });
          req.on('end', () => resolve(Buffer.concat(chunks)));
          req.on('error', reject);
        });
        assert.equal(got.length, BIG);
        assert.equal(sha(got), sha(BIG_BODY));
      } finally {
        session.close();
      }
    });

    it('bodies read from backends piece by piece reach a slow client with a small window byte-exact, several streams at once', async () => {
      // The proxy reads each backend's response into a shared buffer that the next read overwrites:
      // whatever it keeps (DATA waiting for the window, large payloads waiting for the socket) must be a copy.
      const session = h2connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 20_000 } });
      try {
        const one = (seed: number): Promise<Buffer> =>
          new Promise((resolve, reject) => {
            const req = session.request({ ':path': `/pieces?seed=${seed}` });
            const chunks: Buffer[] = [];
            req.on('data', (d: Buffer) => {
              chunks.push(d);
              if (seed % 2 === 0) return;
              req.pause();
              setTimeout(() => req.resume(), 1);
            });
            req.on('end', () => resolve(Buffer.concat(chunks)));
            req.on('error', reject);
          });
        const seeds = [1, 2, 3, 4];
        const got = await Promise.all(seeds.map(one));
        for (const [i, seed] of seeds.entries()) {
          const want = unique(seed, PIECES_TOTAL);
          assert.equal(got[i]!.length, want.length, `stream ${seed}: length`);
          assert.ok(got[i]!.equals(want), `stream ${seed}: the bytes as the backend sent them`);
        }
      } finally {
        session.close();
      }
    });

    it('a 5 MB upload to a backend that reads slowly arrives intact', async () => {
      const session = h2connect(`http://127.0.0.1:${port}`);
      try {
        const reply = await new Promise<string>((resolve, reject) => {
          const req = session.request({ ':path': '/slowsink', ':method': 'POST' });
          let body = '';
          req.setEncoding('utf8');
          req.on('data', (d: string) => (body += d));
          req.on('end', () => resolve(body));
          req.on('error', reject);
          req.end(BIG_BODY);
        });
        assert.equal(reply, `${BIG} ${sha(BIG_BODY)}`);
      } finally {
        session.close();
      }
    });

    it('a client with wide-open windows that stops reading holds the backend back (socket backpressure)', async () => {
      const raw = await Raw.open(port, [[4, 0x7fffffff]]);
      raw.dropData = true;
      try {
        raw.send(F.WINDOW_UPDATE, 0, 0, u32(0x7fffffff - 65_535));
        raw.socket.pause();
        hugeDone = false;
        raw.request(1, GET('/huge'));
        await new Promise((r) => setTimeout(r, 1500));
        assert.equal(hugeDone, false, 'the backend could not write 64 MB to a client that reads nothing');
        raw.socket.resume();
        assert.ok(await raw.next((f) => f.type === F.DATA && f.id === 1 && (f.flags & 1) === 1, 30_000));
        assert.equal(raw.dataBytes.get(1), 64 << 20);
        assert.equal(hugeDone, true);
      } finally {
        raw.close();
      }
    });

    it('a client that stops reading, then reads slowly, gets its responses intact while another is served meanwhile', async () => {
      // The proxy writes its output blocks themselves (and the blocks a stream keeps response bytes
      // in) and reuses them for other connections: a block a socket has not sent yet must not be
      // written into again.
      const SIZE = 16 << 20;
      const raw = await Raw.open(port, [[F.SETTINGS_INITIAL_WINDOW_SIZE, 0x7fffffff]]);
      const session = h2connect(`http://127.0.0.1:${port}`);
      const fetch = (seed: number, size: number): Promise<void> =>
        new Promise((resolve, reject) => {
          const req = session.request({ ':path': `/unique?seed=${seed}&size=${size}` });
          const chunks: Buffer[] = [];
          req.on('data', (d: Buffer) => chunks.push(d));
          req.on('end', () => {
            const got = Buffer.concat(chunks);
            if (got.equals(unique(seed, size))) resolve();
            else reject(new Error(`seed ${seed}: ${got.length} bytes, not the ones the backend sent`));
          });
          req.on('error', reject);
        });
      let round = 0;
      const fetchRound = (): Promise<unknown> => {
        const first = 100 + 8 * round++;
        return Promise.all(
          Array.from({ length: 8 }, (_, i) => fetch(first + i, [16_384, 3000, 40_000, 70_001][i % 4]!)),
        );
      };
      // One large response, and three in pieces of many sizes (held by their streams while the
      // socket is full: copies in blocks, or in Node's pool).
      const streams: [number, string, Buffer][] = [
        [1, `/unique?seed=7&size=${SIZE}`, unique(7, SIZE)],
        [3, '/pieces?seed=3', unique(3, PIECES_TOTAL)],
        [5, '/pieces?seed=5', unique(5, PIECES_TOTAL)],
        [7, '/pieces?seed=9', unique(9, PIECES_TOTAL)],
      ];
      let throttle: NodeJS.Timeout | undefined;
      try {
        raw.send(F.WINDOW_UPDATE, 0, 0, u32(0x7fffffff - 65_535));
        raw.socket.pause();
        for (const [id, path] of streams) raw.request(id, GET(path));
        // Long enough for the proxy's socket to that client to fill up.
        await new Promise((r) => setTimeout(r, 500));
        while (round < 8) await fetchRound();
        // Now it reads in short bursts, and the other client goes on until it has it all.
        let done = false;
        const ended = (id: number): Promise<Frame | undefined> =>
          raw.next((f) => f.type === F.DATA && f.id === id && (f.flags & 1) === 1, 30_000);
        const all = Promise.all(streams.map(([id]) => ended(id)));
        void all.then(() => (done = true));
        throttle = setInterval(() => {
          raw.socket.resume();
          setTimeout(() => raw.socket.pause(), 1);
        }, 5);
        while (!done) await fetchRound();
        const last = await all;
        for (const [k, [id, path, want]] of streams.entries()) {
          assert.ok(last[k], `${path}: ended`);
          const got = Buffer.concat(
            raw.frames.filter((f) => f.type === F.DATA && f.id === id).map((f) => f.payload),
          );
          assert.ok(got.equals(want), `${path}: the bytes the backend sent (${got.length} bytes)`);
        }
      } finally {
        clearInterval(throttle);
        session.close();
        raw.close();
      }
    });

    it('responses held on streams with no window go out intact when the client opens every window at once', async () => {
      // What a stream holds is copied into pooled blocks (pieces from 4 KB) or Node's pool (smaller
      // ones); the pump then frames large pieces by reference and copies small ones next to their
      // frame headers. A block framed by reference is reused only after the write that sends it.
      const raw = await Raw.open(port, [[F.SETTINGS_INITIAL_WINDOW_SIZE, 0]]);
      try {
        raw.send(F.WINDOW_UPDATE, 0, 0, u32(0x7fffffff - 65_535));
        const streams: [number, string, Buffer][] = [
          [1, '/unique?seed=1&size=16384', unique(1, 16_384)],
          [3, '/pieces?seed=3', unique(3, PIECES_TOTAL)],
          [5, '/pieces?seed=5', unique(5, PIECES_TOTAL)],
          [7, '/pieces?seed=7', unique(7, PIECES_TOTAL)],
        ];
        for (const [id, path] of streams) raw.request(id, GET(path));
        // Long enough for every stream to hold what it may before its writer is asked to wait.
        await new Promise((r) => setTimeout(r, 300));
        raw.socket.write(
          Buffer.concat(streams.map(([id]) => F.frame(F.WINDOW_UPDATE, 0, id, u32(0x7fffffff)))),
        );
        for (const [id, path, want] of streams) {
          assert.ok(
            await raw.next((f) => f.type === F.DATA && f.id === id && (f.flags & 1) === 1, 10_000),
            `${path}: ended`,
          );
          const got = Buffer.concat(
            raw.frames.filter((f) => f.type === F.DATA && f.id === id).map((f) => f.payload),
          );
          assert.ok(got.equals(want), `${path}: the bytes the backend sent (${got.length} bytes)`);
        }
      } finally {
        raw.close();
      }
    });

    it('16 KB responses do not allocate output memory each: the same blocks are written again', async () => {
      // A fresh 16 KB buffer per response is external memory that V8 counts against the old
      // generation: at a gigabyte a second it started a full collection every 40-50 ms.
      const session = h2connect(`http://127.0.0.1:${port}`);
      try {
        const fetch = (seed: number): Promise<boolean> =>
          new Promise((resolve, reject) => {
            const req = session.request({ ':path': `/unique?seed=${seed}&size=16384` });
            const chunks: Buffer[] = [];
            req.on('data', (d: Buffer) => chunks.push(d));
            req.on('end', () => resolve(Buffer.concat(chunks).equals(unique(seed, 16_384))));
            req.on('error', reject);
          });
        // Past our SETTINGS (4 streams at once), node's client queues the rest.
        await new Promise((resolve) => session.once('remoteSettings', resolve));
        await Promise.all(Array.from({ length: 16 }, (_, i) => fetch(i)));
        const before = blockCounts().made;
        for (let round = 0; round < 25; round++) {
          const ok = await Promise.all(Array.from({ length: 16 }, (_, i) => fetch(1000 + round * 16 + i)));
          assert.ok(ok.every(Boolean), `round ${round}: bodies intact`);
        }
        const made = blockCounts().made - before;
        assert.ok(made < 16, `${made} blocks made for 400 responses`);
      } finally {
        session.close();
      }
    });

    it("a backend's connection-specific response fields (te) do not reach HTTP/2 clients", async () => {
      const session = h2connect(`http://127.0.0.1:${port}`);
      try {
        const headers = await new Promise<Record<string, unknown>>((resolve, reject) => {
          const req = session.request({ ':path': '/te' });
          req.on('response', (h) => resolve(h));
          req.on('error', reject);
          req.resume();
        });
        assert.equal(headers[':status'], 200);
        assert.equal(headers.te, undefined);
        assert.equal(headers['x-kept'], 'yes');
      } finally {
        session.close();
      }
    });

    it('many streams at once, each with a body both ways, on one session', async () => {
      const session = h2connect(`http://127.0.0.1:${port}`);
      try {
        // Past our SETTINGS (4 streams at once), node's client queues the rest.
        await new Promise((resolve) => session.once('remoteSettings', resolve));
        const one = (i: number): Promise<string> =>
          new Promise((resolve, reject) => {
            const req = session.request({ ':path': '/echo', ':method': 'POST' });
            const chunks: Buffer[] = [];
            req.on('data', (d: Buffer) => chunks.push(d));
            req.on('end', () => resolve(sha(Buffer.concat(chunks))));
            req.on('error', reject);
            req.end(pattern(200_000 + i * 1000));
          });
        const got = await Promise.all(Array.from({ length: 12 }, (_, i) => one(i)));
        assert.deepEqual(
          got,
          Array.from({ length: 12 }, (_, i) => sha(pattern(200_000 + i * 1000))),
        );
      } finally {
        session.close();
      }
    });
  });

  describe('malformed requests: RST_STREAM PROTOCOL_ERROR, the connection carries on', () => {
    const cases: [string, [string, string][]][] = [
      ['an uppercase header name', [...GET(), ['X-Upper', 'a']]],
      [
        'a pseudo-header after a regular one',
        [
          [':method', 'GET'],
          ['x-a', 'b'],
          [':scheme', 'http'],
          [':path', '/'],
        ],
      ],
      ['an unknown pseudo-header', [...GET(), [':foo', 'bar']]],
      ['extended CONNECT (:protocol, not enabled)', [...GET(), [':protocol', 'websocket']]],
      [
        'no :path',
        [
          [':method', 'GET'],
          [':scheme', 'http'],
        ],
      ],
      [
        'no :method',
        [
          [':scheme', 'http'],
          [':path', '/'],
        ],
      ],
      [':path twice', [...GET(), [':path', '/again']]],
      [
        'an empty :path',
        [
          [':method', 'GET'],
          [':scheme', 'http'],
          [':path', ''],
        ],
      ],
      [
        'a space in :path',
        [
          [':method', 'GET'],
          [':scheme', 'http'],
          [':path', '/a b'],
        ],
      ],
      ['a Connection header', [...GET(), ['connection', 'keep-alive']]],
      ['Transfer-Encoding', [...GET(), ['transfer-encoding', 'chunked']]],
      ['Upgrade', [...GET(), ['upgrade', 'websocket']]],
      ['te other than trailers', [...GET(), ['te', 'gzip']]],
      ['CR LF in a value', [...GET(), ['x-a', 'a\r\nx-b: c']]],
      ['a value with leading space', [...GET(), ['x-a', ' a']]],
      ['a bad content-length', [...GET(), ['content-length', '1x']]],
      [
        'a content-length on a request that has no body (END_STREAM on HEADERS)',
        [...GET(), ['content-length', '3']],
      ],
    ];
    for (const [what, fields] of cases) {
      it(what, async () => {
        await withRaw(port, async (raw) => {
          raw.request(1, fields);
          assert.equal(await raw.rst(1), F.PROTOCOL_ERROR);
          raw.request(3, GET());
          assert.equal(await raw.status(3), '200', 'the next request on the connection is served');
        });
      });
    }

    it('header fields named like Object.prototype members (constructor, toString) are plain fields', async () => {
      await withRaw(port, async (raw) => {
        raw.request(1, [...GET('/headers'), ['constructor', 'a'], ['tostring', 'b'], ['constructor', 'c']]);
        assert.equal(await raw.status(1), '200');
      });
    });

    it('a request head split over HEADERS and CONTINUATION frames', async () => {
      await withRaw(port, async (raw) => {
        const b = block([...GET(), ['x-long', 'v'.repeat(1500)]]);
        raw.send(F.HEADERS, F.FLAG_END_STREAM, 1, b.subarray(0, 500));
        raw.send(F.CONTINUATION, 0, 1, b.subarray(500, 1000));
        raw.send(F.CONTINUATION, F.FLAG_END_HEADERS, 1, b.subarray(1000));
        assert.equal(await raw.status(1), '200');
      });
    });

    it('te: trailers is allowed', async () => {
      await withRaw(port, async (raw) => {
        raw.request(1, [...GET(), ['te', 'trailers']]);
        assert.equal(await raw.status(1), '200');
      });
    });

    it('DATA longer than content-length, and shorter at END_STREAM', async () => {
      await withRaw(port, async (raw) => {
        const post = (id: number): void =>
          raw.request(
            id,
            [
              [':method', 'POST'],
              [':scheme', 'http'],
              [':path', '/echo'],
              ['content-length', '5'],
            ],
            false,
          );
        post(1);
        raw.send(F.DATA, 0, 1, Buffer.from('abcdefgh'));
        assert.equal(await raw.rst(1), F.PROTOCOL_ERROR);
        post(3);
        raw.send(F.DATA, F.FLAG_END_STREAM, 3, Buffer.from('abc'));
        assert.equal(await raw.rst(3), F.PROTOCOL_ERROR);
        post(5);
        raw.send(F.DATA, F.FLAG_END_STREAM | F.FLAG_PADDED, 5, Buffer.from('\x03abcdexyz'));
        assert.equal(await raw.status(5), '200', 'padding does not count');
      });
    });

    it('padding may take all of a frame after its fixed fields (DATA, HEADERS with a priority)', async () => {
      await withRaw(port, async (raw) => {
        const head = Buffer.concat([
          Buffer.from([3]),
          u32(0),
          Buffer.from([16]),
          block(POST('/echo')),
          Buffer.alloc(3),
        ]);
        raw.send(F.HEADERS, F.FLAG_END_HEADERS | F.FLAG_PADDED | F.FLAG_PRIORITY, 1, head);
        raw.send(F.DATA, F.FLAG_PADDED, 1, Buffer.from([4, 0, 0, 0, 0]));
        raw.send(F.DATA, F.FLAG_PADDED | F.FLAG_END_STREAM, 1, Buffer.from([1, 0x68, 0x69, 0]));
        assert.equal(await raw.status(1), '200');
        const body = await raw.next((f) => f.type === F.DATA && f.id === 1);
        assert.equal(body?.payload.toString(), 'hi');
      });
    });

    it('HEADERS with a self-dependent priority; PRIORITY frames otherwise ignored', async () => {
      await withRaw(port, async (raw) => {
        const prio = Buffer.concat([u32(1), Buffer.from([16]), block(GET())]);
        raw.send(F.HEADERS, F.FLAG_END_HEADERS | F.FLAG_END_STREAM | F.FLAG_PRIORITY, 1, prio);
        assert.equal(await raw.rst(1), F.PROTOCOL_ERROR);
        raw.send(F.PRIORITY, 0, 5, Buffer.concat([u32(0), Buffer.from([16])]));
        raw.request(3, GET());
        assert.equal(await raw.status(3), '200');
      });
    });

    it('HEADERS on a half-closed (remote) stream: RST_STREAM STREAM_CLOSED', async () => {
      await withRaw(port, async (raw) => {
        raw.request(1, GET('/slow?ms=300'));
        raw.request(1, GET('/slow?ms=300'), false);
        assert.equal(await raw.rst(1), F.STREAM_CLOSED);
      });
    });

    it('a stream the client resets is cut upstream too (client-gone)', async () => {
      await withRaw(port, async (raw) => {
        const before = errors()['client-gone'] ?? 0;
        raw.request(1, GET('/slow?ms=3000'));
        await waitFor(() => backend.served > 0, 5000, 'the request at the backend');
        raw.send(F.RST_STREAM, 0, 1, u32(F.CANCEL));
        await waitFor(() => (errors()['client-gone'] ?? 0) > before, 5000, 'client-gone counted');
        raw.request(3, GET());
        assert.equal(await raw.status(3), '200', 'the connection carries on');
      });
    });

    it('WINDOW_UPDATE of 0 on a stream: RST_STREAM PROTOCOL_ERROR', async () => {
      await withRaw(port, async (raw) => {
        raw.request(1, GET('/slow?ms=300'));
        raw.send(F.WINDOW_UPDATE, 0, 1, u32(0));
        assert.equal(await raw.rst(1), F.PROTOCOL_ERROR);
      });
    });
  });

  describe('connection errors: GOAWAY with the right code, then close', () => {
    const cases: [string, number | number[], (raw: Raw) => void, boolean?][] = [
      [
        'a first frame that is not SETTINGS',
        F.PROTOCOL_ERROR,
        (r) => r.send(F.PING, 0, 0, Buffer.alloc(8)),
        false,
      ],
      ['an even stream id', F.PROTOCOL_ERROR, (r) => r.request(2, GET())],
      [
        'a stream id lower than one already used',
        [F.PROTOCOL_ERROR, F.STREAM_CLOSED],
        (r) => {
          r.request(5, GET());
          r.request(3, GET());
        },
      ],
      ['DATA on stream 0', F.PROTOCOL_ERROR, (r) => r.send(F.DATA, 0, 0, Buffer.from('x'))],
      ['DATA on an idle stream', F.PROTOCOL_ERROR, (r) => r.send(F.DATA, 0, 7, Buffer.from('x'))],
      ['RST_STREAM on an idle stream', F.PROTOCOL_ERROR, (r) => r.send(F.RST_STREAM, 0, 9, u32(8))],
      ['HEADERS on stream 0', F.PROTOCOL_ERROR, (r) => r.request(0, GET())],
      ['PUSH_PROMISE from a client', F.PROTOCOL_ERROR, (r) => r.send(F.PUSH_PROMISE, 4, 1, Buffer.alloc(4))],
      ['CONTINUATION without HEADERS', F.PROTOCOL_ERROR, (r) => r.send(F.CONTINUATION, 4, 1, block(GET()))],
      [
        'another frame inside a header block',
        F.PROTOCOL_ERROR,
        (r) => {
          r.send(F.HEADERS, 0, 1, block(GET()));
          r.send(F.PING, 0, 0, Buffer.alloc(8));
        },
      ],
      [
        'SETTINGS_ENABLE_PUSH 2',
        F.PROTOCOL_ERROR,
        (r) => r.send(F.SETTINGS, 0, 0, settingsPayload([[2, 2]])),
      ],
      [
        'SETTINGS_INITIAL_WINDOW_SIZE 2^31',
        F.FLOW_CONTROL_ERROR,
        (r) => r.send(F.SETTINGS, 0, 0, settingsPayload([[4, 0x80000000]])),
      ],
      [
        'SETTINGS_MAX_FRAME_SIZE 100',
        F.PROTOCOL_ERROR,
        (r) => r.send(F.SETTINGS, 0, 0, settingsPayload([[5, 100]])),
      ],
      ['SETTINGS of 5 bytes', F.FRAME_SIZE_ERROR, (r) => r.send(F.SETTINGS, 0, 0, Buffer.alloc(5))],
      ['SETTINGS on a stream', F.PROTOCOL_ERROR, (r) => r.send(F.SETTINGS, 0, 1, Buffer.alloc(0))],
      ['a SETTINGS ACK with a payload', F.FRAME_SIZE_ERROR, (r) => r.send(F.SETTINGS, 1, 0, Buffer.alloc(6))],
      ['a PING of 7 bytes', F.FRAME_SIZE_ERROR, (r) => r.send(F.PING, 0, 0, Buffer.alloc(7))],
      [
        'a frame beyond SETTINGS_MAX_FRAME_SIZE',
        F.FRAME_SIZE_ERROR,
        (r) => r.send(F.DATA, 0, 1, Buffer.alloc(20_000)),
      ],
      [
        'WINDOW_UPDATE of 0 on the connection',
        F.PROTOCOL_ERROR,
        (r) => r.send(F.WINDOW_UPDATE, 0, 0, u32(0)),
      ],
      [
        'a connection window beyond 2^31-1',
        F.FLOW_CONTROL_ERROR,
        (r) => r.send(F.WINDOW_UPDATE, 0, 0, u32(0x7fffffff)),
      ],
      // PADDED frames (RFC 9113 §4.2, §6.1, §6.2): too short for their fixed fields, FRAME_SIZE_ERROR;
      // padding longer than what is left after them, PROTOCOL_ERROR.
      [
        'a padded DATA frame without room for its Pad Length',
        F.FRAME_SIZE_ERROR,
        (r) => {
          r.request(1, POST('/echo'), false);
          r.send(F.DATA, F.FLAG_PADDED, 1);
        },
      ],
      [
        'a padded DATA frame whose padding is as long as its payload',
        F.PROTOCOL_ERROR,
        (r) => {
          r.request(1, POST('/echo'), false);
          r.send(F.DATA, F.FLAG_PADDED, 1, Buffer.from([3, 0x61, 0x62]));
        },
      ],
      [
        'a padded HEADERS frame without room for its Pad Length',
        F.FRAME_SIZE_ERROR,
        (r) => r.send(F.HEADERS, F.FLAG_END_HEADERS | F.FLAG_END_STREAM | F.FLAG_PADDED, 1),
      ],
      [
        'a padded HEADERS frame whose padding is longer than the rest of its payload',
        F.PROTOCOL_ERROR,
        (r) =>
          r.send(
            F.HEADERS,
            F.FLAG_END_HEADERS | F.FLAG_END_STREAM | F.FLAG_PADDED,
            1,
            Buffer.from([4, 1, 2, 3]),
          ),
      ],
      [
        'a padded HEADERS frame with a priority, without room for both',
        F.FRAME_SIZE_ERROR,
        (r) =>
          r.send(
            F.HEADERS,
            F.FLAG_END_HEADERS | F.FLAG_END_STREAM | F.FLAG_PADDED | F.FLAG_PRIORITY,
            1,
            Buffer.from([0, 0, 0, 0, 0]),
          ),
      ],
      [
        'a padded HEADERS frame with a priority, its padding longer than what the priority leaves',
        F.PROTOCOL_ERROR,
        (r) =>
          r.send(
            F.HEADERS,
            F.FLAG_END_HEADERS | F.FLAG_END_STREAM | F.FLAG_PADDED | F.FLAG_PRIORITY,
            1,
            Buffer.from([4, 0, 0, 0, 0, 16, 0, 0]),
          ),
      ],
      ['an HPACK index of 0', F.COMPRESSION_ERROR, (r) => r.send(F.HEADERS, 5, 1, Buffer.from([0x80]))],
      [
        'an HPACK index beyond the tables',
        F.COMPRESSION_ERROR,
        (r) => r.send(F.HEADERS, 5, 1, Buffer.from([0xff, 0x10])),
      ],
    ];
    for (const [what, code, act, withSettings] of cases) {
      it(what, async () => {
        const raw = await Raw.open(port, [], withSettings ?? true);
        try {
          act(raw);
          const got = await raw.goaway();
          if (Array.isArray(code)) assert.ok(code.includes(got!), `GOAWAY ${got}`);
          else assert.equal(got, code);
          await raw.next(() => false, 2000);
          assert.ok(raw.closed, 'the connection is closed');
        } finally {
          raw.close();
        }
      });
    }

    it('an unknown frame type is ignored', async () => {
      await withRaw(port, async (raw) => {
        raw.send(0xfa, 0xff, 1, Buffer.from('whatever'));
        raw.request(1, GET());
        assert.equal(await raw.status(1), '200');
      });
    });
  });

  describe('limits', () => {
    it('431 for a header list over headerLimits.maxSize, and for more fields than maxCount', async () => {
      await withRaw(port, async (raw) => {
        const served = backend.served;
        raw.request(1, [...GET(), ['x-big', 'a'.repeat(5000)]]);
        assert.equal(await raw.status(1), '431');
        raw.request(3, [
          ...GET(),
          ...Array.from({ length: 25 }, (_, i): [string, string] => [`x-h${i}`, 'v']),
        ]);
        assert.equal(await raw.status(3), '431');
        raw.request(5, GET());
        assert.equal(await raw.status(5), '200');
        assert.equal(backend.served, served + 1, 'refused requests never reached the backend');
        assert.ok((errors()['header-too-large'] ?? 0) >= 1 && (errors()['too-many-headers'] ?? 0) >= 1);
      });
    });

    it('REFUSED_STREAM beyond maxConcurrentStreams', async () => {
      await withRaw(port, async (raw) => {
        for (let id = 1; id <= 9; id += 2) raw.request(id, GET('/slow?ms=300'));
        assert.equal(await raw.rst(9), F.REFUSED_STREAM);
        assert.equal(await raw.status(1), '200');
      });
    });

    it('a client that lowers SETTINGS_HEADER_TABLE_SIZE gets a table size update first (nghttp2 insists)', async () => {
      const raw = await Raw.open(port, [[1, 0]]);
      try {
        raw.request(1, GET());
        const f = await raw.next((f) => f.type === F.HEADERS && f.id === 1);
        assert.equal(f!.payload[0], 0x20);
        assert.equal(await raw.status(1), '200');
      } finally {
        raw.close();
      }
      const session = h2connect(`http://127.0.0.1:${port}`, { settings: { headerTableSize: 0 } });
      try {
        const status = await new Promise<unknown>((resolve, reject) => {
          const req = session.request({ ':path': '/' });
          req.on('response', (h) => resolve(h[':status']));
          req.on('error', reject);
          req.resume();
        });
        assert.equal(status, 200);
      } finally {
        session.close();
      }
    });

    it('CONNECT: 405', async () => {
      await withRaw(port, async (raw) => {
        raw.request(1, [
          [':method', 'CONNECT'],
          [':authority', 'example.com:443'],
        ]);
        assert.equal(await raw.status(1), '405');
      });
    });

    it('our SETTINGS: the configured limits, no push, a 1 MiB stream window; the connection window widened', async () => {
      await withRaw(port, async (raw) => {
        const s = await raw.next((f) => f.type === F.SETTINGS && (f.flags & 1) === 0);
        const got = new Map<number, number>();
        for (let i = 0; i < s!.payload.length; i += 6)
          got.set(s!.payload.readUInt16BE(i), s!.payload.readUInt32BE(i + 2));
        assert.equal(got.get(3), 4);
        assert.equal(got.get(2), 0);
        assert.equal(got.get(4), 1 << 20);
        assert.equal(got.get(6), 4096);
        const wu = await raw.next((f) => f.type === F.WINDOW_UPDATE && f.id === 0);
        assert.equal(wu!.payload.readUInt32BE(0) + 65_535, 16 << 20);
        assert.ok(await raw.next((f) => f.type === F.SETTINGS && (f.flags & 1) === 1), 'our ACK of theirs');
      });
    });
  });

  describe('floods: GOAWAY ENHANCE_YOUR_CALM, bounded', () => {
    it('PING flood from a client that does not read', async () => {
      await withRaw(port, async (raw) => {
        raw.socket.pause();
        const pings = Buffer.concat(
          Array.from({ length: 1000 }, () => F.frame(F.PING, 0, 0, Buffer.alloc(8))),
        );
        let sent = 0;
        for (; sent < 2000 && !raw.socket.destroyed; sent++) {
          if (!raw.socket.write(pings)) await new Promise((r) => setTimeout(r, 5));
          if ((errors()['h2-control-flood'] ?? 0) >= 1) break;
        }
        assert.ok((errors()['h2-control-flood'] ?? 0) >= 1, `cut after ${sent}k PINGs`);
        raw.socket.resume();
        assert.equal(await raw.goaway(), F.ENHANCE_YOUR_CALM);
      });
    });

    it('SETTINGS flood from a client that does not read', async () => {
      await withRaw(port, async (raw) => {
        raw.socket.pause();
        const before = errors()['h2-control-flood'] ?? 0;
        const many = Buffer.concat(
          Array.from({ length: 1000 }, () => F.frame(F.SETTINGS, 0, 0, Buffer.alloc(0))),
        );
        let sent = 0;
        for (; sent < 5000 && !raw.socket.destroyed; sent++) {
          if (!raw.socket.write(many)) await new Promise((r) => setTimeout(r, 5));
          if ((errors()['h2-control-flood'] ?? 0) > before) break;
        }
        assert.ok((errors()['h2-control-flood'] ?? 0) > before, `cut after ${sent}k SETTINGS`);
        raw.socket.resume();
        assert.equal(await raw.goaway(), F.ENHANCE_YOUR_CALM);
      });
    });

    it('empty DATA frames on an open stream', async () => {
      await withRaw(port, async (raw) => {
        raw.request(
          1,
          [
            [':method', 'POST'],
            [':scheme', 'http'],
            [':path', '/slow?ms=2000'],
          ],
          false,
        );
        const empties = Buffer.concat(Array.from({ length: 1000 }, () => F.frame(F.DATA, 0, 1)));
        raw.socket.write(empties);
        assert.equal(await raw.goaway(), F.ENHANCE_YOUR_CALM);
        assert.ok((errors()['h2-frame-flood'] ?? 0) >= 1);
      });
    });

    it('a header block over the byte bound in CONTINUATION frames', async () => {
      await withRaw(port, async (raw) => {
        raw.send(F.HEADERS, 0, 1, block(GET()));
        for (let i = 0; i < 10 && !raw.closed; i++)
          raw.send(F.CONTINUATION, 0, 1, Buffer.alloc(16_000, 0x40));
        assert.equal(await raw.goaway(), F.ENHANCE_YOUR_CALM);
      });
    });

    it('refused streams count as resets: opening past the limit for ever is cut', async () => {
      await withRaw(port, async (raw) => {
        for (let id = 1; id < 800 && !raw.closed; id += 2) raw.request(id, GET('/slow?ms=1000'));
        assert.equal(await raw.goaway(), F.ENHANCE_YOUR_CALM);
      });
    });
  });
});

describe('HTTP/2 client sessions: keepalive PING and maxConnectionAge', () => {
  let backend: HttpBackend;
  let gateway: Gateway;
  let kaPort: number;
  let agePort: number;
  /** Service `ka` pings; service `age` has a short maxConnectionAge. `streams`: ka's maxConcurrentStreams. */
  const yaml = (streams?: number): string => `
services:
  - name: ka
    protocol: http
    listen: 127.0.0.1:${kaPort}
    http2: { ping: { interval: 200ms, timeout: 300ms }${streams === undefined ? '' : `, maxConcurrentStreams: ${streams}`} }
    backends: { static: [127.0.0.1:${backend.port}] }
  - name: age
    protocol: http
    listen: 127.0.0.1:${agePort}
    maxConnectionAge: 500ms
    http2: { ping: { interval: off } }
    backends: { static: [127.0.0.1:${backend.port}] }
`;

  before(async () => {
    backend = await startH1Backend();
    [kaPort, agePort] = [await freePort(), await freePort()];
    ({ gateway } = await startGateway(yaml()));
  });
  after(async () => {
    await gateway.shutdown();
    await backend.close();
  });

  it('a client that never answers our PINGs is closed and counted', async () => {
    const raw = await Raw.open(kaPort);
    try {
      assert.ok(await raw.next((f) => f.type === F.PING && (f.flags & 1) === 0), 'a PING came');
      await raw.next(() => false, 3000);
      assert.ok(raw.closed, 'closed for the missing ACK');
      const errors = gateway.services.get('ka')!.handler.stats.errors ?? {};
      assert.ok((errors['client-ping-timeout'] ?? 0) >= 1);
    } finally {
      raw.close();
    }
  });

  it('a client that answers them stays', async () => {
    const session = h2connect(`http://127.0.0.1:${kaPort}`);
    try {
      let pings = 0;
      session.on('ping', () => pings++);
      await new Promise((r) => setTimeout(r, 1000));
      assert.ok(pings >= 2, `${pings} PINGs answered`);
      assert.equal(session.closed || session.destroyed, false);
    } finally {
      session.close();
    }
  });

  it('closes in two steps: a request the client sent before it saw the first GOAWAY is served, later ones are refused', async () => {
    await withRaw(agePort, async (raw) => {
      // maxConnectionAge: first a GOAWAY naming the highest stream id, with a PING.
      const first = await raw.next((f) => f.type === F.GOAWAY);
      assert.ok(first, 'a first GOAWAY came');
      assert.equal(first.payload.readUInt32BE(0), 0x7fffffff);
      assert.equal(first.payload.readUInt32BE(4), 0);
      const ping = await raw.next((f) => f.type === F.PING && (f.flags & F.FLAG_ACK) === 0);
      assert.ok(ping, 'a PING came with it');
      // A request already on its way: taken, though it is newer than any stream so far.
      raw.request(1, GET('/slow?ms=1500'));
      // The round trip is over: the final GOAWAY names stream 1 …
      raw.send(F.PING, F.FLAG_ACK, 0, ping.payload);
      const last = await raw.next((f) => f.type === F.GOAWAY && f.payload.readUInt32BE(0) !== 0x7fffffff);
      assert.equal(last?.payload.readUInt32BE(0), 1);
      // … a stream opened after it is refused, and stream 1 completes.
      raw.request(3, GET('/'));
      assert.equal(await raw.rst(3), F.REFUSED_STREAM);
      assert.equal(await raw.status(1), '200');
      await raw.next(() => false, 3000);
      assert.ok(raw.closed, 'closed after its last stream');
    });
  });

  it('a client that does not answer the PING gets the final GOAWAY a second later', async () => {
    await withRaw(agePort, async (raw) => {
      assert.ok(await raw.next((f) => f.type === F.GOAWAY), 'a first GOAWAY came');
      const last = await raw.next(
        (f) => f.type === F.GOAWAY && f.payload.readUInt32BE(0) !== 0x7fffffff,
        3000,
      );
      assert.equal(last?.payload.readUInt32BE(0), 0);
      await raw.next(() => false, 3000);
      assert.ok(raw.closed, 'closed, having no streams');
    });
  });

  it('a reload that changes the http2 settings sends GOAWAY to existing sessions; new ones get the new SETTINGS', async () => {
    const old = h2connect(`http://127.0.0.1:${kaPort}`);
    old.on('error', () => {});
    try {
      await new Promise((resolve) => old.once('remoteSettings', resolve));
      const goaway = new Promise<number>((resolve) => old.once('goaway', (code: number) => resolve(code)));
      await gateway.reload(parseConfig(yaml(7), 'test.yaml'));
      assert.equal(await goaway, 0);
      const fresh = h2connect(`http://127.0.0.1:${kaPort}`);
      try {
        const settings = await new Promise<{ maxConcurrentStreams?: number }>((resolve) =>
          fresh.once('remoteSettings', resolve),
        );
        assert.equal(settings.maxConcurrentStreams, 7);
      } finally {
        fresh.close();
      }
    } finally {
      old.destroy();
    }
  });

  it('maxConnectionAge: GOAWAY NO_ERROR, the stream in flight completes, then the connection closes', async () => {
    const session = h2connect(`http://127.0.0.1:${agePort}`);
    session.on('error', () => {});
    try {
      const goaway = new Promise<number>((resolve) =>
        session.once('goaway', (code: number) => resolve(code)),
      );
      const closed = new Promise<void>((resolve) => session.once('close', () => resolve()));
      const status = await new Promise<number>((resolve, reject) => {
        const req = session.request({ ':path': '/slow?ms=1000' });
        req.on('response', (h) => {
          req.resume();
          req.on('end', () => resolve(Number(h[':status'])));
        });
        req.on('error', reject);
      });
      assert.equal(await goaway, 0);
      assert.equal(status, 200);
      await closed;
    } finally {
      session.destroy();
    }
  });
});

describe('HTTP/2 request bodies and the connection window', () => {
  it('a whole upload answered with an error by the proxy gives its bytes back to the connection window', async () => {
    // Nothing listens on the backend's port: every request fails to connect, after its body came.
    const [port, dead] = [await freePort(), await freePort()];
    const { gateway } = await startGateway(`
services:
  - name: nobody
    protocol: http
    listen: 127.0.0.1:${port}
    backends: { static: [127.0.0.1:${dead}] }
`);
    try {
      await withRaw(port, async (raw) => {
        // 20 uploads of 900 KB each, one after the other: 18 MB through a 16 MiB connection window,
        // which only works if the bytes of answered uploads are given back.
        const body = Buffer.alloc(900 * 1024, 0x61);
        const frames: Buffer[] = [];
        for (let off = 0; off < body.length; off += 16_384) {
          const last = off + 16_384 >= body.length;
          frames.push(F.frame(F.DATA, last ? F.FLAG_END_STREAM : 0, 0, body.subarray(off, off + 16_384)));
        }
        for (let i = 0; i < 20; i++) {
          const id = 1 + 2 * i;
          raw.request(
            id,
            [
              [':method', 'POST'],
              [':scheme', 'http'],
              [':authority', 'x'],
              [':path', '/upload'],
            ],
            false,
          );
          for (const f of frames) {
            f.writeUInt32BE(id, 5);
            raw.socket.write(Buffer.from(f));
          }
          assert.equal(await raw.status(id), '502', `upload ${i + 1}`);
        }
        const credited = raw.frames
          .filter((f) => f.type === F.WINDOW_UPDATE && f.id === 0)
          .reduce((n, f) => n + f.payload.readUInt32BE(0), 0);
        // The first WINDOW_UPDATE widens the window to 16 MiB; the rest give uploaded bytes back.
        assert.ok(credited - ((16 << 20) - 65_535) >= 8 << 20, `credited ${credited}`);
        assert.equal(
          raw.frames.find((f) => f.type === F.GOAWAY),
          undefined,
        );
      });
    } finally {
      await gateway.shutdown();
    }
  });
});
