/**
 * HTTP/1.1 downstream on raw sockets: the request head is parsed from the
 * client's bytes (http1-parser.ts), each request balanced on its own over the
 * service's upstream pools (http-forward.ts), and the response written back
 * as one buffer where it fits. Requests on a connection are served in order
 * (pipelined ones wait in the buffer). Keep-alive client connections are asked
 * to go with `Connection: close` (drain, shutdown, `maxConnectionAge`), never
 * cut between requests. A request asking to upgrade (WebSocket) is handed,
 * parsed, with its socket to websocket.ts.
 */
import { STATUS_CODES, type IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { PickContext } from '../balance/types.ts';
import type { Timer } from '../cluster/clock.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { type LiveNode, LiveSet } from '../live-set.ts';
import type { RequestHandler, Upgrade, UpgradeRequest } from './http.ts';
import { socketAddresses, tlsServerName } from './socket-address.ts';
import { readThrough, SHARED_READ_BUFFER, sharedView } from './socket-reads.ts';
import { ACCEPTED, directWritePending, writeDirect, writeDirectOutcome, WROTE } from './socket-writes.ts';
import { errorReply, type ProxyFailure } from './http-errors.ts';
import type { CloseWatcher, Downstream, HttpPlane } from './http-forward.ts';
import type { RawRequestHead, RawResponseHead } from './http-upstream.ts';
import { appendForwarded, forwardableHeaders, type HeaderMap, maxAge } from './http-headers.ts';
import { jittered, sweepEvery } from './http-keepalive.ts';
import {
  ChunkedDecoder,
  type ChunkSink,
  emptyHead,
  type HeadLimits,
  hasToken,
  HttpParseError,
  type MessageHead,
  type ParsedHeaders,
  parseHead,
  type RawFields,
} from './http1-parser.ts';

/** Response headers never forwarded to the client (the proxy writes its own framing). */
const RESPONSE_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'trailer',
]);
/** Bytes of pipelined requests buffered while one is served; beyond, the socket is paused. */
const PIPELINE_BUFFER = 65_536;
/** A request head must arrive whole within this (node:http's headersTimeout). */
const HEAD_TIMEOUT_MS = 30_000;
const ignore = (): void => {};
const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n');
/** `HTTP/1.1 200 OK\r\n` and the like, by status. */
const STATUS_LINES: string[] = [];
function statusLine(status: number): string {
  return (STATUS_LINES[status] ??= `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`);
}
/** The same as bytes, for heads copied into their buffer (see `put`). */
const STATUS_BYTES: Buffer[] = [];
function statusBytes(status: number): Buffer {
  return (STATUS_BYTES[status] ??= Buffer.from(statusLine(status), 'latin1'));
}
/** The end of a response head this hop writes: framing (none, empty, chunked) × Connection (close, keep-alive, none). */
const HEAD_TAILS: readonly Buffer[] = ['', 'content-length: 0\r\n', 'transfer-encoding: chunked\r\n'].flatMap(
  (framing) =>
    ['connection: close\r\n\r\n', 'connection: keep-alive\r\n\r\n', '\r\n'].map((ending) =>
      Buffer.from(framing + ending, 'latin1'),
    ),
);
const CRLF = Buffer.from('\r\n');
const CHUNKED_END = Buffer.from('transfer-encoding: chunked\r\n\r\n');

/**
 * Copy `src` into `out` at `o`; returns its length. The parts of a head are
 * copied rather than written from strings: `Buffer.write` of a latin1 string
 * costs a call into C++ and an encoding lookup each time (~25-50 ns), more
 * than a copy (~10 ns), and a few bytes cost less still byte by byte.
 */
function put(out: Buffer, o: number, src: Buffer): number {
  const n = src.length;
  if (n <= 8) for (let k = 0; k < n; k++) out[o + k] = src[k]!;
  else out.set(src, o);
  return n;
}

export class Http1Handler implements RequestHandler {
  readonly plane: HttpPlane;
  readonly #conns = new LiveSet<ClientConn>();
  limits: HeadLimits;
  maxAgeMs: number;
  idleMs: number;
  draining = false;

  constructor(plane: HttpPlane) {
    this.plane = plane;
    const config = plane.ctx.config;
    this.limits = { ...config.headerLimits };
    this.maxAgeMs = maxAge(config);
    this.idleMs = config.httpTimeouts.clientIdle;
  }

  configure(config: ServiceConfig): void {
    this.plane.configure(config);
    this.limits = { ...config.headerLimits };
    this.maxAgeMs = maxAge(config);
    this.idleMs = config.httpTimeouts.clientIdle;
  }

  /** Ask every client connection to go: idle ones close now, busy ones after their response. */
  drain(): void {
    this.draining = true;
    for (const c of this.#conns) c.leave();
    this.plane.drain();
  }

  /** The connection was handed over (an upgrade): drain no longer reaches it from here. */
  forget(conn: ClientConn): void {
    if (conn.node !== undefined) this.#conns.delete(conn.node);
  }

  handleConnection(socket: Socket, upgrade: Upgrade, first?: Buffer): void {
    const conn = new ClientConn(this, socket, upgrade);
    conn.node = this.#conns.add(conn);
    socket.on('close', conn.onClose);
    this.#watch();
    if (first !== undefined && first.length > 0) conn.received(first);
    socket.resume();
  }

  #sweepTimer: Timer | undefined;

  /**
   * Keep-alive idle timeout and `maxConnectionAge` without a timer per
   * connection (a socket keeps its Timeout object for life, even after
   * setTimeout(0); and a Timeout of a duration of its own, as a jittered age
   * is, costs Node a timer list of its own). One sweep per service:
   * - closes connections with no request in flight whose byte counters have
   *   not moved for `clientIdle` (between 1 and 1.25 times it);
   * - asks connections past their age to leave (`Connection: close` on the
   *   next response, or closed now if idle), within 1/20 of the age or a
   *   minute, whichever is less, of when they were due.
   */
  #watch(): void {
    if (this.#sweepTimer !== undefined) return;
    const every = sweepEvery(this.idleMs, this.maxAgeMs);
    if (every === 0) return;
    const clock = this.plane.ctx.clock;
    this.#sweepTimer = clock.setTimer(() => {
      this.#sweepTimer = undefined;
      const now = clock.now();
      for (const c of this.#conns) {
        if (c.leaveAt !== 0 && now >= c.leaveAt) {
          c.leaveAt = 0;
          c.leave();
        }
        const traffic = c.socket.bytesRead + c.socket.bytesWritten;
        if (traffic !== c.idleBytes || c.cur !== undefined) {
          c.idleBytes = traffic;
          c.idleSince = now;
        } else if (this.idleMs > 0 && now - c.idleSince >= this.idleMs) {
          c.socket.destroy();
        } else c.quiet();
      }
      if (this.#conns.size > 0) this.#watch();
    }, every);
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * The request for the upgrade handler: the parsed head plus its field lines
 * as sent (names in their case, in order), read back from the head's bytes,
 * which the parser has already checked line by line.
 */
function upgradeRequest(head: MessageHead, buf: Buffer): UpgradeRequest {
  const text = buf.toString('latin1', 0, head.end);
  const rawHeaders: string[] = [];
  let at = text.indexOf('\r\n') + 2;
  while (at < head.end - 2) {
    const eol = text.indexOf('\r\n', at);
    const colon = text.indexOf(':', at);
    rawHeaders.push(text.slice(at, colon), text.slice(colon + 1, eol).trim());
    at = eol + 2;
  }
  return { method: head.method, url: head.target, headers: head.headers, rawHeaders };
}

const kClientConn = Symbol('holdfast.http1.conn');
interface ClientSocket extends Socket {
  /** Cleared when the connection is handed over (upgrade), so that nothing of it stays with the socket. */
  [kClientConn]: ClientConn | undefined;
}
function onClientRead(this: Socket, n: number, buf: Buffer): void {
  const conn = (this as ClientSocket)[kClientConn];
  if (conn === undefined) return;
  // The shared read buffer is parsed in place (what is kept is copied); Node's own chunks are kept as they are.
  if (buf === SHARED_READ_BUFFER) conn.receivedInPlace(sharedView(0, n));
  else conn.received(buf.subarray(0, n));
}

/** One client connection: its unparsed bytes, the request being served and its body. */
class ClientConn implements ChunkSink {
  readonly handler: Http1Handler;
  /** Its place among the handler's connections. */
  node: LiveNode<ClientConn> | undefined = undefined;
  readonly socket: Socket;
  readonly #upgrade: Upgrade;
  /** Bytes received and not consumed yet. */
  #buf: Buffer | undefined;
  cur: Http1Downstream | undefined;
  /** Request body being received: bytes left (Content-Length) or the chunked decoder. */
  #bodyLeft = 0;
  #decoder: ChunkedDecoder | undefined;
  #processing = false;
  #clientEnded = false;
  leaving: boolean;
  /** `maxConnectionAge`: when the handler's sweep asks it to leave (0: never). */
  leaveAt = 0;
  #headTimer: Timer | undefined;
  #gone = false;
  readonly https: boolean;
  readonly proto: string;
  readonly ip: string;
  readonly port: number | undefined;
  readonly localIp: string | undefined;
  readonly localPort: number | undefined;
  #fwdHost: string | undefined;
  #fwd = '';
  /** This hop's forwarding field lines for a head passed through (cached while the Host and `withProto` stay the same). */
  #fwdLinesHost: string | undefined;
  #fwdLinesProto = false;
  #fwdLines: Buffer = EMPTY;
  /** Where the field lines of the request head being parsed are (reused). */
  readonly rawFields: RawFields = {
    start: 0,
    end: 0,
    drop: [],
    dropped: 0,
    opaque: false,
    host: '',
    forwardedProto: false,
  };
  /** The head of the request being parsed, filled in place (its fields are copied by Http1Downstream). */
  readonly #head: MessageHead = emptyHead();
  /** The last request's Http1Downstream, which may serve the next one (see `reusable`). */
  #last: Http1Downstream | undefined;

  /** No traffic since the last idle sweep: an idle connection keeps nothing of its last request. */
  quiet(): void {
    if (this.cur === undefined) this.#last = undefined;
    this.#spareOut = undefined;
  }

  /** The last response buffer the kernel took whole at once: the next one of its size is filled in it. */
  #spareOut: Buffer | undefined;

  /** A buffer of `size` bytes for a response's head and first bytes (written with `writeOut`). */
  outBuffer(size: number): Buffer {
    const spare = this.#spareOut;
    if (spare !== undefined && spare.length === size) {
      this.#spareOut = undefined;
      return spare;
    }
    return Buffer.allocUnsafe(size);
  }

  /** Write a buffer from `outBuffer`; kept for the next response when the kernel took it whole. */
  writeOut(out: Buffer): boolean {
    const outcome = writeDirectOutcome(this.socket, out);
    if (outcome === WROTE) this.#spareOut = out;
    return outcome <= ACCEPTED;
  }
  /** The pick context of this connection's requests (see Http1Downstream.pick). */
  readonly pick: RequestPick;
  /** For the handler's idle sweep: traffic at the last sweep, and since when it has not moved. */
  idleBytes = 0;
  idleSince = 0;
  /**
   * Responses written whose last byte is not flushed yet, oldest first. At
   * most one on a connection kept alive: once one waits, no further request is
   * served until it is out (`#flushWait`), even requests pipelined in the same
   * read that the plane would answer at once (503, no backend). A response
   * that ends the connection may follow one still waiting.
   */
  readonly #flushing: Http1Downstream[] = [];

  /** The socket closed: forget the connection and end what it was serving. */
  readonly onClose = (): void => {
    this.handler.forget(this);
    this.closed();
  };

  constructor(handler: Http1Handler, socket: Socket, upgrade: Upgrade) {
    this.handler = handler;
    this.socket = socket;
    this.#upgrade = upgrade;
    this.leaving = handler.draining;
    this.https = (socket as Socket & { encrypted?: boolean }).encrypted === true;
    this.proto = this.https ? 'https' : 'http';
    const a = socketAddresses(socket);
    this.ip = a.ip ?? 'unknown';
    this.port = a.port;
    this.localIp = a.localIp;
    this.localPort = a.localPort;
    this.pick = new RequestPick(this);
    socket.setNoDelay(true);
    // Reads into the shared read buffer, copied (socket-reads.ts): no buffer
    // allocated per read, no Readable stream machinery per chunk.
    (socket as ClientSocket)[kClientConn] = this;
    readThrough(socket, onClientRead);
    socket.on('end', this.#onEnd);
    this.idleSince = handler.plane.ctx.clock.now();
    if (handler.maxAgeMs > 0) this.leaveAt = this.idleSince + jittered(handler.maxAgeMs, 0.1);
  }

  /** This hop's `Forwarded` element (cached while the Host stays the same). */
  forwardedFor(host: string | undefined): string {
    if (host !== this.#fwdHost || this.#fwd === '') {
      const node = this.ip.includes(':') ? `"[${this.ip}]"` : this.ip;
      this.#fwdHost = host;
      this.#fwd = `for=${node};proto=${this.proto}`;
      if (host !== undefined) this.#fwd += `;host="${host.replace(/["\\]/g, '')}"`;
    }
    return this.#fwd;
  }

  /**
   * The forwarding field lines this hop appends to a head passed through:
   * X-Forwarded-For, X-Forwarded-Proto (unless the client sent one), Forwarded.
   */
  forwardingLines(host: string, withProto: boolean): Buffer {
    if (host !== this.#fwdLinesHost || withProto !== this.#fwdLinesProto || this.#fwdLines.length === 0) {
      this.#fwdLinesHost = host;
      this.#fwdLinesProto = withProto;
      const proto = withProto ? `x-forwarded-proto: ${this.proto}\r\n` : '';
      this.#fwdLines = Buffer.from(
        `x-forwarded-for: ${this.ip}\r\n${proto}forwarded: ${this.forwardedFor(host)}\r\n`,
        'latin1',
      );
    }
    return this.#fwdLines;
  }

  /** Write a response's last bytes; the request completes once they are flushed. */
  writeLast(down: Http1Downstream, tail: string | Buffer): void {
    const socket = this.socket;
    if (this.#flushing.length === 0 && socket.writableLength === 0 && !directWritePending(socket)) {
      // Nothing queued: done once the kernel has the tail (nearly always at once).
      if (tail.length === 0 || writeDirect(socket, tail)) {
        down.closed(true);
        return;
      }
      // The rest is queued: an empty write behind it says when it is flushed.
      tail = '';
    }
    this.#flushing.push(down);
    socket.write(tail, 'latin1', this.#onFlushed);
  }

  readonly #onFlushed = (err?: Error | null): void => {
    this.#flushing.shift()?.closed(err == null);
    // A response that had to wait for the client to read is out: serve the next request.
    if (this.#flushWait && this.#flushing.length === 0) {
      this.#flushWait = false;
      if (err == null && !this.#gone && this.cur === undefined && !this.socket.destroyed) this.#next();
    }
  };

  leave(): void {
    if (this.#gone) return;
    this.leaving = true;
    if (this.cur === undefined) this.socket.end();
  }

  /** The client half-closed (listeners allow half-open): answer what it sent, then close. */
  readonly #onEnd = (): void => {
    this.#clientEnded = true;
    const cur = this.cur;
    if (cur !== undefined && !cur.bodyDone) {
      // Every byte read so far has gone to the body: it can never arrive
      // whole, so nothing would end this request (the request timeout stops
      // at the response head; a backend that echoes waits for the rest). Let
      // it go as if the client had reset, or it holds its backend and this
      // connection forever.
      this.socket.destroy();
      return;
    }
    if (cur === undefined && (this.#buf === undefined || this.#buf.length === 0)) this.socket.end();
  };

  /** A head that does not complete within HEAD_TIMEOUT_MS (slowloris) closes the connection. */
  #watchHead(): void {
    if (this.#headTimer !== undefined) return;
    this.#headTimer = this.handler.plane.ctx.clock.setTimer(() => {
      this.#headTimer = undefined;
      if (this.cur === undefined && this.#buf !== undefined && this.#buf.length > 0) this.socket.destroy();
    }, HEAD_TIMEOUT_MS);
  }

  closed(): void {
    this.#gone = true;
    this.#headTimer?.cancel();
    const cur = this.cur;
    if (cur !== undefined) {
      this.cur = undefined;
      const body = cur.body;
      if (body !== undefined && !body.readableEnded && !cur.bodyDone) {
        body.destroy(new Error('the client went away while sending its body'));
      }
      cur.closed(false);
    }
  }

  /** Bytes from the client (owned: copies or Node's own chunks). */
  received(data: Buffer): void {
    if (this.#gone) return;
    const buf = this.#buf;
    this.#buf = buf === undefined || buf.length === 0 ? data : Buffer.concat([buf, data]);
    this.#process();
  }

  /** `#buf` is a view of the shared read buffer: whatever is kept of it is copied. */
  #inPlace = false;

  /**
   * Bytes from the client in the shared read buffer, valid during this call
   * only: parsed where they are; body bytes and unconsumed bytes are copied.
   */
  receivedInPlace(data: Buffer): void {
    if (this.#gone) return;
    const buf = this.#buf;
    if (buf !== undefined && buf.length > 0) {
      // Joined to what came before: a copy.
      this.#buf = Buffer.concat([buf, data]);
      this.#process();
      return;
    }
    this.#buf = data;
    this.#inPlace = true;
    try {
      this.#process();
    } finally {
      this.#inPlace = false;
      const rest = this.#buf;
      if (rest !== undefined) this.#buf = rest.length === 0 ? undefined : Buffer.from(rest);
    }
  }

  chunkData(data: Buffer): void {
    const body = this.cur?.body;
    if (body !== undefined && !body.push(this.#inPlace ? Buffer.from(data) : data)) this.socket.pause();
  }

  /** Consume buffered bytes: the current request's body, then (once its response is done) the next head. */
  #process(): void {
    if (this.#processing || this.#flushWait) return;
    this.#processing = true;
    try {
      // A response that had to wait for the client stops the loop too (see
      // responseDone): otherwise every request pipelined in this read that is
      // answered at once (503, no backend) would be queued behind it.
      while (!this.#gone && !this.#flushWait) {
        const buf = this.#buf;
        const cur = this.cur;
        if (cur !== undefined) {
          if (!cur.bodyDone && buf !== undefined && buf.length > 0) this.#feedBody(cur, buf);
          const rest = this.#buf;
          if (rest !== undefined && rest.length > PIPELINE_BUFFER) this.socket.pause();
          return;
        }
        if (buf === undefined || buf.length === 0) return;
        if (this.leaving) {
          // Asked to go: the next request is not read.
          this.socket.end();
          return;
        }
        if (!this.#startRequest(buf)) return; // the head is not complete yet
      }
    } catch (err) {
      if (!(err instanceof HttpParseError)) throw err;
      this.#reject(err);
    } finally {
      this.#processing = false;
    }
  }

  /** Parse the next request head and start forwarding it; false while the head is incomplete. */
  #startRequest(buf: Buffer): boolean {
    const limits = this.handler.limits;
    const raw = this.rawFields;
    let head = parseHead(buf, 0, true, limits, buf.length, raw, this.#head);
    if (head === undefined) {
      this.#buf = buf;
      this.#watchHead();
      return false;
    }
    if (this.#headTimer !== undefined) {
      this.#headTimer.cancel();
      this.#headTimer = undefined;
    }
    // Most heads pass through as they came; the rest (HTTP/1.0, upgrades,
    // Expect, forwarding fields to append to, …) are parsed again into a map.
    const passThrough = !raw.opaque && head.minor === 1;
    if (!passThrough) {
      head = parseHead(buf, 0, true, limits)!;
      const h = head.headers;
      if (h.upgrade !== undefined && hasToken(String(h.connection ?? '').toLowerCase(), 'upgrade')) {
        // WebSocket (or another upgrade): the WebSocket handler takes it from here.
        this.#buf = undefined;
        this.socket.removeListener('end', this.#onEnd);
        this.#gone = true;
        // Let go of the socket entirely, so that nothing of this connection
        // stays alive for the upgraded connection's whole life.
        this.socket.removeListener('close', this.onClose);
        (this.socket as ClientSocket)[kClientConn] = undefined;
        this.handler.forget(this);
        const after = head.end < buf.length ? Buffer.from(buf.subarray(head.end)) : EMPTY;
        this.#upgrade(upgradeRequest(head, buf), this.socket, after);
        return false;
      }
      const expect = h.expect;
      if (expect !== undefined && String(expect).toLowerCase() !== '100-continue') {
        this.#buf = undefined;
        this.socket.end(
          'HTTP/1.1 417 Expectation Failed\r\nconnection: close\r\ncontent-length: 0\r\n\r\n',
          'latin1',
        );
        this.#gone = true;
        return false;
      }
    }
    const hasBody = head.chunked || head.contentLength > 0;
    // The last request's object serves this one where it can: nothing answers through it any more.
    const last = this.#last;
    const passed = passThrough ? buf : undefined;
    const down =
      last !== undefined && last.reusable
        ? last.reuse(head, hasBody, passed)
        : (this.#last = new Http1Downstream(this, head, hasBody, passed));
    this.cur = down;
    const rest = head.end < buf.length ? buf.subarray(head.end) : undefined;
    this.#buf = rest;
    if (hasBody) {
      this.#decoder = head.chunked ? new ChunkedDecoder(this.handler.limits.maxSize) : undefined;
      this.#bodyLeft = head.contentLength;
      // Body bytes that came with the head are checked before anything reaches a backend.
      if (rest !== undefined) this.#feedBody(down, rest);
    }
    if (this.cur === down) this.handler.plane.forward(down);
    return true;
  }

  #feedBody(cur: Http1Downstream, buf: Buffer): void {
    const decoder = this.#decoder;
    let used: number;
    if (decoder !== undefined) {
      used = decoder.feed(buf, 0, buf.length, this);
      if (decoder.done) {
        this.#decoder = undefined;
        cur.bodyDone = true;
        cur.body!.push(null);
      }
    } else {
      used = Math.min(this.#bodyLeft, buf.length);
      this.#bodyLeft -= used;
      this.chunkData(used === buf.length ? buf : buf.subarray(0, used));
      if (this.#bodyLeft === 0) {
        cur.bodyDone = true;
        cur.body!.push(null);
      }
    }
    this.#buf = used === buf.length ? undefined : buf.subarray(used);
  }

  /** A malformed request: answer 400/431 (if no response started) and close. */
  #reject(err: HttpParseError): void {
    this.handler.plane.count(err.reason === 'too-many-headers' ? 'too-many-headers' : err.reason);
    this.#buf = undefined;
    const cur = this.cur;
    if (cur !== undefined) {
      if (cur.body !== undefined && !cur.body.destroyed) cur.body.destroy(err);
      if (cur.headSent) {
        this.socket.destroy();
        return;
      }
      cur.abandon();
    }
    const status = err.status === 431 ? '431 Request Header Fields Too Large' : '400 Bad Request';
    const text = `${err.status} ${err.message} (holdfast)\n`;
    this.socket.end(
      `HTTP/1.1 ${status}\r\ncontent-type: text/plain\r\nconnection: close\r\nx-holdfast-error: ${err.reason}\r\ncontent-length: ${text.length}\r\n\r\n${text}`,
      'latin1',
    );
    this.#gone = true;
  }

  /** The current response is fully written: serve the next request (or close). */
  responseDone(down: Http1Downstream, keepAlive: boolean): void {
    if (this.cur !== down) return;
    this.cur = undefined;
    if (!keepAlive || !down.bodyDone || this.leaving) {
      this.#gone = true;
      this.socket.end();
      return;
    }
    if (this.#flushing.length > 0) {
      // The response's last bytes are still queued (writeLast, called just
      // before): the client is slower to read than to pipeline. Serve the next
      // request once they are out (#onFlushed), so that a client that never
      // reads cannot make the gateway fetch and queue responses without bound.
      // Nothing more is read from it meanwhile.
      this.#flushWait = true;
      this.socket.pause();
      return;
    }
    this.#next();
  }

  /** A response is waiting to go out before the next request is served (see responseDone). */
  #flushWait = false;

  /** Serve the next request (pipelined or still to come), or close after a half-close. */
  #next(): void {
    this.socket.resume();
    // A request answered at once, from within #process: its loop goes on to
    // the next one, and whoever called it closes after a half-close (ending
    // here would drop the requests still buffered).
    if (this.#processing) return;
    this.#process();
    // Pipelined requests may still wait behind a response the client has not
    // read: #onFlushed comes back here once it is out.
    if (this.#clientEnded && this.cur === undefined && !this.#flushWait) this.socket.end();
  }

  /** Resume reading the request body (the upstream wants more). */
  readBody(): void {
    this.socket.resume();
  }
}

/**
 * The pick context of a connection's requests, one per connection: it reads
 * the request it was last handed out for (`Http1Downstream.pick` points it
 * there on every read); the target string and header map are made only if a
 * policy reads them.
 */
class RequestPick implements PickContext {
  now = 0;
  readonly clientIp: string;
  readonly clientPort: number | undefined;
  readonly localIp: string | undefined;
  readonly localPort: number | undefined;
  /** The TLS server name the client asked for, where holdfast terminates TLS. */
  readonly sni: string | undefined;
  down: Http1Downstream | undefined;

  constructor(conn: ClientConn) {
    this.clientIp = conn.ip;
    this.clientPort = conn.port;
    this.localIp = conn.localIp;
    this.localPort = conn.localPort;
    this.sni = tlsServerName(conn.socket);
  }

  get host(): string | undefined {
    return this.down?.authority;
  }

  /** The request target. */
  get path(): string | undefined {
    return this.down?.path;
  }

  /** The request's headers as the client sent them (lower-case names). */
  get headers(): ParsedHeaders | undefined {
    return this.down?.clientHeaders();
  }
}

/** One request from a client connection, as the forwarding plane sees it. */
class Http1Downstream implements Downstream, RawRequestHead {
  method = '';
  /** The target: made from the head passed through when first read. */
  #path: string | undefined;
  #targetStart = 0;
  #targetEnd = 0;
  authority: string | undefined;
  body: Readable | undefined;
  get grpc(): boolean {
    return false;
  }
  /** The plane's state of the request (see Downstream.exchange): reused with this object. */
  get keepsExchange(): boolean {
    return true;
  }
  exchange: object | undefined;
  /** This request itself when its head passes through as the client sent it (`bytes`, `chunked`). */
  rawHead: RawRequestHead | undefined;
  /** The head passed through (see RawRequestHead); empty when it does not pass through. */
  bytes: Buffer = EMPTY;
  /** The request body goes chunked (passed through). */
  chunked = false;
  /** The last request's `bytes`, which went to the kernel whole: the next head of its size is built in it. */
  #spareBytes: Buffer | undefined;

  /** `bytes` were written (see RawRequestHead): whole, they may be filled again for the next request. */
  written(whole: boolean): void {
    this.#spareBytes = whole ? this.bytes : undefined;
  }
  readonly #conn: ClientConn;
  #minor = 1;
  #clientKeepAlive = false;
  /**
   * The client's head as sent (passed through), for a header map built on
   * demand: when it dropped no lines, the start of `bytes` up to `#clientEnd`
   * (then a blank line) is that head, and no copy is kept.
   */
  #requestText: string | undefined;
  #clientEnd = 0;
  #clientHeaders: ParsedHeaders | undefined;
  #headers: HeaderMap | undefined;
  // The state below is (re)set by #start for each request this object serves.
  bodyDone!: boolean;
  headSent!: boolean;
  /**
   * The response head, written with the first body bytes (one write): the
   * status line (and, from a header map, the fields), the field lines passed
   * through, then this hop's framing fields and the blank line.
   */
  #headPending!: boolean;
  /** The status line of a head passed through (empty for a head from a map). */
  #headStatus!: Buffer;
  /** A head from a map: the status line and fields ('' for a head passed through). */
  #headText!: string;
  #headRaw: RawResponseHead | undefined;
  #headTail!: Buffer;
  #chunkedResponse!: boolean;
  #keepAlive!: boolean;
  #ended!: boolean;
  #closeWatcher: CloseWatcher | undefined;
  #closedAlready!: boolean;

  /** `passed`: the bytes the head was parsed from in pass-through mode (`conn.rawFields` says where its lines are). */
  constructor(conn: ClientConn, head: MessageHead, hasBody: boolean, passed: Buffer | undefined) {
    this.#conn = conn;
    this.#start(head, hasBody, passed);
  }

  /**
   * May serve the connection's next request (`reuse`): it is closed, so its
   * exchange is finished and nothing answers through it any more, and it had
   * no body (whose stream and listeners could outlive it).
   */
  get reusable(): boolean {
    return this.#closedAlready && this.body === undefined;
  }

  /** Serve the connection's next request with this object (see `reusable`): every field starts over. */
  reuse(head: MessageHead, hasBody: boolean, passed: Buffer | undefined): this {
    this.#start(head, hasBody, passed);
    return this;
  }

  /** Take on a request: every field of a request served before starts over. */
  #start(head: MessageHead, hasBody: boolean, passed: Buffer | undefined): void {
    const conn = this.#conn;
    this.#path = undefined;
    this.#clientHeaders = undefined;
    this.#headers = undefined;
    this.headSent = false;
    this.#headPending = false;
    this.#headStatus = EMPTY;
    this.#headText = '';
    this.#headRaw = undefined;
    this.#headTail = EMPTY;
    this.#chunkedResponse = false;
    this.#keepAlive = false;
    this.#ended = false;
    this.#closeWatcher = undefined;
    this.#closedAlready = false;
    this.method = head.method;
    this.#minor = head.minor;
    this.#clientKeepAlive = head.keepAlive;
    if (passed !== undefined) {
      const raw = conn.rawFields;
      const host = raw.host!;
      this.authority = host;
      this.#targetStart = raw.targetStart!;
      this.#targetEnd = raw.targetEnd!;
      // One buffer: the start line and the field lines this hop keeps, as
      // they came, this hop's forwarding lines, the framing, the blank line.
      const chunked = hasBody && head.chunked;
      const lines = conn.forwardingLines(host, !raw.forwardedProto);
      const tail = chunked ? CHUNKED_END : CRLF;
      const drop = raw.drop;
      const dropped = raw.dropped;
      let kept = raw.end;
      for (let k = 0; k < dropped; k += 2) kept -= drop[k + 1]! - drop[k]!;
      const size = kept + lines.length + tail.length;
      const spare = this.#spareBytes;
      this.#spareBytes = undefined;
      const out = spare !== undefined && spare.length === size ? spare : Buffer.allocUnsafe(size);
      let o = 0;
      let from = 0;
      for (let k = 0; k < dropped; k += 2) {
        o += passed.copy(out, o, from, drop[k]);
        from = drop[k + 1]!;
      }
      o += passed.copy(out, o, from, raw.end);
      o += put(out, o, lines);
      put(out, o, tail);
      this.bytes = out;
      this.chunked = chunked;
      this.rawHead = this;
      // Lines were dropped: the client's own head is kept for a header map (rarely asked for).
      this.#requestText = dropped === 0 ? undefined : passed.toString('latin1', 0, head.end);
      this.#clientEnd = raw.end;
    } else {
      this.#path = head.target;
      this.authority = head.headers.host as string | undefined;
      this.bytes = EMPTY;
      this.chunked = false;
      this.rawHead = undefined;
      this.#requestText = undefined;
      this.#clientEnd = 0;
      this.#clientHeaders = head.headers;
      this.#headers = this.#forwardable();
    }
    const expectContinue = this.#clientHeaders?.expect !== undefined;
    this.bodyDone = !hasBody;
    if (hasBody) {
      const body = new Readable({ read: () => conn.readBody(), highWaterMark: 65_536 });
      body.on('error', ignore); // a client gone mid-body: the exchange sees the close
      if (expectContinue && head.minor === 1) {
        const socket = conn.socket;
        body.once('resume', () => {
          if (!this.headSent && !socket.destroyed) socket.write(CONTINUE);
        });
      }
      this.body = body;
    } else this.body = undefined;
  }

  /** The request target. */
  get path(): string {
    return (this.#path ??= this.bytes.toString('latin1', this.#targetStart, this.#targetEnd));
  }

  /** This request's pick context: the connection's, pointed at this request. */
  get pick(): PickContext {
    const pick = this.#conn.pick;
    pick.down = this;
    return pick;
  }

  /** The request's headers as the client sent them (lower-case names, repeated fields joined). */
  clientHeaders(): ParsedHeaders {
    if (this.#clientHeaders !== undefined) return this.#clientHeaders;
    const text = this.#requestText;
    const head =
      text !== undefined
        ? Buffer.from(text, 'latin1')
        : Buffer.concat([this.bytes.subarray(0, this.#clientEnd), CRLF]);
    return (this.#clientHeaders = parseHead(head, 0, true, {
      maxSize: Infinity,
      maxCount: Infinity,
    })!.headers);
  }

  /** Headers to forward (hop-by-hop removed, forwarding headers appended), built when first read. */
  get headers(): HeaderMap {
    return (this.#headers ??= this.#forwardable());
  }

  #forwardable(): HeaderMap {
    const conn = this.#conn;
    const headers = forwardableHeaders(this.clientHeaders());
    if (headers.expect !== undefined) delete headers.expect;
    const host = this.authority;
    if (headers['x-forwarded-for'] === undefined && headers.forwarded === undefined) {
      // The common case, from strings cached on the connection.
      headers['x-forwarded-for'] = conn.ip;
      if (headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = conn.proto;
      headers.forwarded = conn.forwardedFor(host);
    } else appendForwarded(headers, { ip: conn.ip, proto: conn.proto, host });
    return headers;
  }

  get gone(): boolean {
    return this.#conn.socket.destroyed;
  }

  respond(status: number, headers: IncomingHttpHeaders, endStream: boolean): void {
    if (this.headSent || this.#ended || this.#conn.socket.destroyed) return;
    this.headSent = true;
    let head = statusLine(status);
    let named: string | undefined;
    const connection = headers.connection;
    if (connection !== undefined) {
      const c = connection.toLowerCase();
      if (c !== 'keep-alive' && c !== 'close') named = c;
    }
    let hasLength = false;
    for (const name in headers) {
      const v = headers[name];
      if (v === undefined || name.charCodeAt(0) === 58 || RESPONSE_HOP.has(name)) continue;
      if (named !== undefined && hasToken(named, name)) continue;
      if (name === 'content-length') hasLength = true;
      if (typeof v === 'string') head += `${name}: ${v}\r\n`;
      else for (const one of v) head += `${name}: ${one}\r\n`;
    }
    this.#headStatus = EMPTY;
    this.#headText = head;
    this.#headRaw = undefined;
    this.#framing(status, hasLength, endStream);
  }

  /** The head as the backend sent it: its field lines (hop-by-hop ones already left out) pass through. */
  respondRaw(head: RawResponseHead, endStream: boolean): void {
    if (this.headSent || this.#ended || this.#conn.socket.destroyed) return;
    this.headSent = true;
    this.#headStatus = statusBytes(head.status);
    this.#headText = '';
    this.#headRaw = head;
    this.#framing(head.status, head.contentLength >= 0, endStream);
  }

  /** The fields this hop adds (framing, Connection) after the forwarded ones; the head is then pending. */
  #framing(status: number, hasLength: boolean, endStream: boolean): void {
    const noBody = this.method === 'HEAD' || status === 204 || status === 304 || status < 200;
    let keepAlive = this.#clientKeepAlive && !this.#conn.leaving;
    // HEAD_TAILS[framing × 3 + Connection]: framing 1 is `content-length: 0`,
    // 2 chunked; Connection 0 close, 1 keep-alive, 2 none (HTTP/1.1's default).
    let tail = 0;
    if (!noBody && !hasLength) {
      if (endStream) tail = 3;
      else if (this.#minor === 1) {
        tail = 6;
        this.#chunkedResponse = true;
      } else keepAlive = false; // HTTP/1.0 without a length: the body ends at close
    }
    if (keepAlive) tail += this.#minor === 0 ? 1 : 2;
    this.#keepAlive = keepAlive;
    this.#headTail = HEAD_TAILS[tail]!;
    this.#headPending = true;
    if (endStream || noBody) this.end(undefined);
  }

  /** Bytes of the pending head (0 once written). */
  #headLength(): number {
    if (!this.#headPending) return 0;
    return (
      this.#headStatus.length +
      this.#headText.length +
      (this.#headRaw?.linesLength ?? 0) +
      this.#headTail.length
    );
  }

  /** Copy the pending head into `out` at 0; returns where it ends. */
  #putHead(out: Buffer): number {
    if (!this.#headPending) return 0;
    this.#headPending = false;
    const lines = this.#headRaw;
    let o: number;
    if (lines !== undefined) {
      o = put(out, 0, this.#headStatus);
      o += lines.copyLines(out, o);
      this.#headRaw = undefined;
    } else o = out.write(this.#headText, 0, 'latin1');
    return o + put(out, o, this.#headTail);
  }

  /** The pending head followed by `tail`, as one buffer. */
  #takeHead(tail = ''): Buffer {
    const out = Buffer.allocUnsafe(this.#headLength() + tail.length);
    const o = this.#putHead(out);
    if (tail.length > 0) out.write(tail, o, 'latin1');
    return out;
  }

  /** Chunks may be views of a read buffer: the small first one is copied with the head anyway. */
  get takesViews(): boolean {
    return true;
  }

  write(data: Buffer, transient = false): boolean {
    const socket = this.#conn.socket;
    if (this.#ended || socket.destroyed) return true;
    if (this.method === 'HEAD') return true;
    const len = data.length;
    if (len === 0) return true;
    // A chunk written as it is (not copied into one buffer with the head or its chunk size) must be ours to keep.
    const asIs = len >= 16_384 || (!this.#chunkedResponse && !this.#headPending);
    const chunk = transient && asIs ? Buffer.from(data) : data;
    if (this.#chunkedResponse) {
      const size = `${len.toString(16)}\r\n`;
      if (len < 16_384) {
        const out = this.#conn.outBuffer(this.#headLength() + size.length + len + 2);
        let o = this.#putHead(out);
        o += out.write(size, o, 'latin1');
        chunk.copy(out, o);
        out[out.length - 2] = 13;
        out[out.length - 1] = 10;
        return this.#conn.writeOut(out);
      }
      socket.cork();
      if (this.#headPending) socket.write(this.#takeHead(size));
      else socket.write(size, 'latin1');
      socket.write(chunk);
      const ok = socket.write('\r\n', 'latin1');
      socket.uncork();
      return ok;
    }
    if (!this.#headPending) return writeDirect(socket, chunk);
    if (len < 16_384) {
      const out = this.#conn.outBuffer(this.#headLength() + len);
      chunk.copy(out, this.#putHead(out));
      return this.#conn.writeOut(out);
    }
    socket.cork();
    socket.write(this.#takeHead());
    const ok = socket.write(chunk);
    socket.uncork();
    return ok;
  }

  onDrain(fn: () => void): void {
    this.#conn.socket.once('drain', fn);
  }

  end(trailers: IncomingHttpHeaders | undefined): void {
    const socket = this.#conn.socket;
    if (this.#ended || socket.destroyed) return;
    if (!this.headSent) return;
    this.#ended = true;
    let tail = '';
    if (this.#chunkedResponse) {
      tail = '0\r\n';
      if (trailers !== undefined) {
        const t = forwardableHeaders(trailers);
        for (const name in t) {
          const v = t[name]!;
          if (typeof v === 'string') tail += `${name}: ${v}\r\n`;
          else for (const one of v) tail += `${name}: ${one}\r\n`;
        }
      }
      tail += '\r\n';
    }
    this.#conn.writeLast(this, this.#headPending ? this.#takeHead(tail) : tail);
    this.#conn.responseDone(this, this.#keepAlive);
  }

  fail(kind: ProxyFailure): void {
    const socket = this.#conn.socket;
    if (this.#ended || socket.destroyed) return;
    if (this.headSent) {
      // The response already started: cutting the connection is the only honest signal left.
      socket.destroy();
      return;
    }
    const reply = errorReply(kind);
    // An unread request body would leave the connection out of step: close it.
    if (!this.bodyDone) this.#conn.leaving = true;
    this.respond(reply.status, reply.headers, false);
    this.write(Buffer.from(reply.body));
    this.end(undefined);
  }

  /** A parse error in the body: the reply comes from the connection; this request just closes. */
  abandon(): void {
    this.#ended = true;
    this.closed(false);
  }

  leave(): void {
    this.#conn.leaving = true;
  }

  abort(): void {
    this.#conn.socket.destroy();
  }

  onClose(watcher: CloseWatcher): void {
    if (this.#closedAlready) return;
    this.#closeWatcher = watcher;
  }

  /** Runs once: the response reached the client (true) or the client went away (false). */
  closed(complete: boolean): void {
    if (this.#closedAlready) return;
    this.#closedAlready = true;
    // Kept by the connection for its next request: let go of what this one read and wrote.
    this.bytes = EMPTY;
    this.#requestText = undefined;
    this.#clientHeaders = undefined;
    this.#headers = undefined;
    this.#headRaw = undefined;
    this.#headText = '';
    const watcher = this.#closeWatcher;
    this.#closeWatcher = undefined;
    watcher?.downstreamClosed(complete);
  }
}
