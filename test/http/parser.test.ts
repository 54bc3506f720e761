/** The HTTP/1.1 head parser and chunked decoder on their own (http1-parser.ts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ChunkedDecoder,
  emptyHead,
  headEnd,
  HttpParseError,
  type MessageHead,
  parseHead,
  type RawFields,
} from '../../src/proxy/http1-parser.ts';

const limits = { maxSize: 4096, maxCount: 20 };
const req = (text: string): ReturnType<typeof parseHead> =>
  parseHead(Buffer.from(text, 'latin1'), 0, true, limits);
const res = (text: string): ReturnType<typeof parseHead> =>
  parseHead(Buffer.from(text, 'latin1'), 0, false, limits);

function decodeAll(pieces: string[]): { body: string; trailers: unknown; rest: string } {
  const d = new ChunkedDecoder(1024);
  let body = '';
  let rest = '';
  const sink = { chunkData: (b: Buffer): void => void (body += b.toString('latin1')) };
  for (const p of pieces) {
    const buf = Buffer.from(p, 'latin1');
    if (d.done) {
      rest += p;
      continue;
    }
    const used = d.feed(buf, 0, buf.length, sink);
    if (d.done) rest += buf.subarray(used).toString('latin1');
  }
  assert.ok(d.done, 'decoder finished');
  return { body, trailers: d.trailers(), rest };
}

describe('headEnd', () => {
  it('finds the blank line where indexOf does, within the limit, for any mix of CR, LF and other bytes', () => {
    const alphabet = [13, 10, 13, 10, 65, 32];
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const term = Buffer.from('\r\n\r\n');
    for (let round = 0; round < 20_000; round++) {
      const buf = Buffer.alloc(1 + rand(40));
      for (let k = 0; k < buf.length; k++) buf[k] = alphabet[rand(alphabet.length)]!;
      const start = rand(buf.length);
      const limit = start + rand(buf.length - start + 1);
      const at = buf.indexOf(term, start);
      const expected = at >= 0 && at + 4 <= limit ? at : -1;
      assert.equal(
        headEnd(buf, start, limit),
        expected,
        `${JSON.stringify(buf.toString('latin1'))} ${start} ${limit}`,
      );
    }
  });
});

describe('parseHead', () => {
  it('parses a request: method, target, version, headers, framing, keep-alive', () => {
    const h = req(
      'POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello',
    )!;
    assert.equal(h.method, 'POST');
    assert.equal(h.target, '/a?b=1');
    assert.equal(h.minor, 1);
    assert.equal(h.contentLength, 5);
    assert.equal(h.chunked, false);
    assert.equal(h.keepAlive, true);
    assert.equal(h.headers.cookie, 'a=1; b=2');
    assert.equal(h.headers['x-a'], '1, 2');
    assert.equal(
      h.end,
      'POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nX-A: 2\r\n\r\n'
        .length,
    );
  });

  it('waits for more bytes when the head is incomplete', () => {
    assert.equal(req('GET / HTTP/1.1\r\nHost: x\r\n'), undefined);
  });

  it('identical repeated Content-Length is accepted; different ones are not', () => {
    assert.equal(
      req('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n')!.contentLength,
      3,
    );
    assert.throws(
      () => req('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n'),
      HttpParseError,
    );
    assert.throws(() => req('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n'), HttpParseError);
    assert.throws(() => req('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n'), HttpParseError);
  });

  it('rejects what could smuggle a request', () => {
    for (const text of [
      'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n',
      'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n',
      'GET  / HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET / HTTP/1.1 \r\nHost: x\r\n\r\n',
      'G@T / HTTP/1.1\r\nHost: x\r\n\r\n',
    ]) {
      assert.throws(() => req(text), HttpParseError, JSON.stringify(text));
    }
  });

  it('431 for too many fields or too large a head, even before it is complete', () => {
    const many = `GET / HTTP/1.1\r\nHost: x\r\n${'X: 1\r\n'.repeat(25)}\r\n`;
    assert.throws(
      () => req(many),
      (e: HttpParseError) => e.status === 431 && e.reason === 'too-many-headers',
    );
    assert.throws(
      () => req(`GET / HTTP/1.1\r\nX: ${'a'.repeat(5000)}`),
      (e: HttpParseError) => e.status === 431,
    );
  });

  it('parses responses: status, close, until-close bodies, set-cookie lists', () => {
    const h = res(
      'HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\n\r\n',
    )!;
    assert.equal(h.status, 404);
    assert.equal(h.keepAlive, false);
    assert.equal(h.contentLength, -1);
    assert.deepEqual(h.headers['set-cookie'], ['a=1', 'b=2']);
    assert.equal(res('HTTP/1.1 204\r\n\r\n')?.status, 204, 'an empty reason phrase is fine');
    assert.equal(res('HTTP/1.0 200 OK\r\n\r\n')?.keepAlive, false);
    assert.throws(() => res('HTTP/1.1 2000 OK\r\n\r\n'), HttpParseError);
  });

  it('raw mode: the same checks, no map, and which field lines a proxy drops', () => {
    const raw = (
      text: string,
      limit?: number,
    ): { head: MessageHead | undefined; fields: RawFields; kept: string } => {
      const buf = Buffer.from(text, 'latin1');
      const fields: RawFields = { start: 0, end: 0, drop: [], dropped: 0, opaque: false };
      const head = parseHead(buf, 0, false, limits, limit ?? buf.length, fields);
      let kept = '';
      if (head !== undefined) {
        let from = fields.start;
        for (let k = 0; k < fields.dropped; k += 2) {
          kept += buf.toString('latin1', from, fields.drop[k]);
          from = fields.drop[k + 1]!;
        }
        kept += buf.toString('latin1', from, fields.end);
      }
      return { head, fields, kept };
    };
    const r = raw(
      'HTTP/1.1 200 OK\r\nServer: n\r\nConnection: keep-alive\r\nCONTENT-LENGTH: 2\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a\r\nTrailer: x\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\r\nok',
    );
    assert.equal(r.head?.status, 200);
    assert.equal(r.head?.contentLength, 2);
    assert.equal(r.head?.keepAlive, true);
    assert.deepEqual(r.head?.headers, {});
    assert.equal(r.fields.opaque, false);
    assert.equal(r.kept, 'Server: n\r\nCONTENT-LENGTH: 2\r\nSet-Cookie: a\r\n');
    const chunked = raw('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n');
    assert.equal(chunked.head?.chunked, true);
    assert.equal(chunked.head?.keepAlive, false);
    assert.equal(chunked.kept, '');
    // A Connection option naming other fields, or a repeated Content-Length: not passed line by line.
    assert.equal(raw('HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\n\r\n').fields.opaque, true);
    assert.equal(
      raw('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n').fields.opaque,
      true,
    );
    // The checks are the map mode's.
    for (const text of [
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n',
      'HTTP/1.1 200 OK\r\nX : 1\r\n\r\n',
      'HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n',
      'HTTP/1.1 200 OK\r\n folded\r\n\r\n',
    ]) {
      assert.throws(() => raw(text), HttpParseError, JSON.stringify(text));
    }
    // Bytes past `limit` are not part of the head.
    assert.equal(raw('HTTP/1.1 200 OK\r\nX: 1\r\n\r\n', 22).head, undefined);
  });

  it('raw mode for requests: the target and Host found in place, one head object filled again', () => {
    const fields: RawFields = { start: 0, end: 0, drop: [], dropped: 0, opaque: false };
    const out = emptyHead();
    const parse = (text: string): MessageHead | undefined =>
      parseHead(Buffer.from(text, 'latin1'), 0, true, limits, undefined, fields, out);
    const text =
      'GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nConnection: Keep-Alive\r\nContent-Length: 12\r\n\r\n';
    const h = parse(text);
    assert.equal(h, out, 'the head given is filled and returned');
    assert.equal(h?.method, 'GET');
    assert.equal(h?.target, '', 'no target string in raw mode');
    assert.equal(text.slice(fields.targetStart, fields.targetEnd), '/a?b=1');
    assert.equal(fields.host, 'example.com');
    assert.equal(h?.contentLength, 12);
    assert.equal(h?.keepAlive, true);
    assert.equal(fields.dropped, 2, 'Connection is dropped');
    const host = fields.host;
    assert.equal(parse('POST /x HTTP/1.1\r\nhost: example.com\r\nconnection: CLOSE\r\n\r\n'), out);
    assert.equal(fields.host, host);
    assert.equal(out.method, 'POST');
    assert.equal(out.keepAlive, false);
    assert.equal(out.contentLength, -1);
    parse('GET / HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: CHUNKED\r\n\r\n');
    assert.equal(fields.host, 'example.org');
    assert.equal(out.chunked, true);
    for (const bad of ['+1', '1 2', '', '1234567890123456', '0x1']) {
      assert.throws(
        () => parse(`GET / HTTP/1.1\r\nHost: a\r\nContent-Length: ${bad}\r\n\r\n`),
        HttpParseError,
        bad,
      );
    }
    assert.throws(
      () => parse('GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkee\r\n\r\n'),
      HttpParseError,
    );
  });
});

describe('parseHead: header-map mode and raw mode agree', () => {
  /** What a mode made of a head: the error's message, or the framing it read. */
  const outcome = (text: string, isRequest: boolean, raw: boolean): string => {
    const buf = Buffer.from(text, 'latin1');
    const fields: RawFields = { start: 0, end: 0, drop: [], dropped: 0, opaque: false };
    try {
      const h = parseHead(buf, 0, isRequest, limits, buf.length, raw ? fields : undefined);
      if (h === undefined) return 'incomplete';
      return `length=${h.contentLength} chunked=${h.chunked} keepAlive=${h.keepAlive} end=${h.end}`;
    } catch (err) {
      if (!(err instanceof HttpParseError)) throw err;
      return `${err.status} ${err.message}`;
    }
  };
  // Field lines that send a request down the map path through the proxy (fields.opaque), or none.
  const mapPath = [
    '',
    'Upgrade: websocket\r\nConnection: Upgrade\r\n',
    'TE: trailers\r\n',
    'X-Forwarded-For: 1.2.3.4\r\n',
  ];
  const framing = [
    'Content-Length: 3\r\n',
    'Content-Length: 3\r\nContent-Length: 3\r\n',
    'Content-Length: 3\r\ncontent-length: 03\r\n',
    'Content-Length: 3\r\nContent-Length: 4\r\n',
    'Content-Length: 3, 3\r\n',
    'Content-Length: +1\r\n',
    'Content-Length: -1\r\n',
    'Content-Length: 0x1\r\n',
    'Content-Length: 1 2\r\n',
    'Content-Length:\r\n',
    'Content-Length: 123456789012345\r\n',
    'Content-Length: 1234567890123456\r\n',
    'Content-Length: \t7 \t\r\n',
    'Transfer-Encoding: chunked\r\n',
    'TRANSFER-ENCODING: ChUnKeD\r\n',
    'Transfer-Encoding: chunkee\r\n',
    'Transfer-Encoding: gzip, chunked\r\n',
    'Transfer-Encoding: chunked, identity\r\n',
    'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n',
    'Transfer-Encoding: chunked\r\nContent-Length: 3\r\n',
    'Content-Length: 3\r\nTransfer-Encoding: chunked\r\n',
    'Transfer-Encoding: \xe3hunked\r\n',
    'Connection: close\r\n',
    'Connection: CLOSE\r\nConnection: keep-alive\r\n',
    'Connection: Keep-Alive, Close\r\n',
  ];

  it('requests: the same refusals and framing, also for heads that take the map path', () => {
    for (const extra of mapPath) {
      for (const fields of framing) {
        for (const version of ['1.1', '1.0']) {
          const text = `POST / HTTP/${version}\r\nHost: x\r\n${extra}${fields}\r\n`;
          const map = outcome(text, true, false);
          assert.equal(outcome(text, true, true), map, JSON.stringify(text));
        }
      }
    }
    // The cases above include refusals and heads taken, in both modes.
    assert.match(
      outcome(
        'POST / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n',
        true,
        false,
      ),
      /^400 conflicting/,
    );
    assert.match(
      outcome(
        'POST / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n',
        true,
        false,
      ),
      /chunked=true/,
    );
  });

  it('responses: the same refusals and framing', () => {
    for (const fields of framing) {
      for (const version of ['1.1', '1.0']) {
        const text = `HTTP/${version} 200 OK\r\nServer: s\r\n${fields}\r\n`;
        assert.equal(outcome(text, false, true), outcome(text, false, false), JSON.stringify(text));
      }
    }
  });
});

describe('ChunkedDecoder', () => {
  const wire =
    '4;ext=1\r\nWiki\r\n5 ; a="b"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\nNEXT';
  it('decodes data, skips extensions, collects trailers and stops at the end of the message', () => {
    const out = decodeAll([wire]);
    assert.equal(out.body, 'Wikipedia in\r\n\r\nchunks.');
    assert.deepEqual(out.trailers, { 'x-t': '1', 'x-u': '2' });
    assert.equal(out.rest, 'NEXT');
  });
  it('gives the same result split at every byte', () => {
    for (let i = 1; i < wire.length; i++) {
      const out = decodeAll([wire.slice(0, i), wire.slice(i)]);
      assert.equal(out.body, 'Wikipedia in\r\n\r\nchunks.', `split at ${i}`);
      assert.deepEqual(out.trailers, { 'x-t': '1', 'x-u': '2' }, `split at ${i}`);
      assert.equal(out.rest, 'NEXT', `split at ${i}`);
    }
    const bytes = decodeAll(Array.from({ length: wire.length }, (_, i) => wire[i]!));
    assert.equal(bytes.body, 'Wikipedia in\r\n\r\nchunks.');
  });
  it('no trailers: undefined', () => {
    assert.equal(decodeAll(['3\r\nabc\r\n0\r\n\r\n']).trailers, undefined);
  });
  it('rejects malformed framing', () => {
    for (const bad of [
      'zz\r\n',
      '3\r\nabcX\r\n',
      '3\nabc\r\n',
      '\r\n',
      '1234567890abc\r\n',
      '0\r\nX: 1\n\r\n',
      '3;\x01\r\n',
    ]) {
      const d = new ChunkedDecoder(1024);
      const buf = Buffer.from(bad, 'latin1');
      assert.throws(
        () => d.feed(buf, 0, buf.length, { chunkData: () => {} }),
        HttpParseError,
        JSON.stringify(bad),
      );
    }
  });
  it('bounds the trailer section', () => {
    const d = new ChunkedDecoder(64);
    const buf = Buffer.from(`0\r\n${'X: 1\r\n'.repeat(20)}\r\n`);
    assert.throws(() => d.feed(buf, 0, buf.length, { chunkData: () => {} }), HttpParseError);
  });
});
