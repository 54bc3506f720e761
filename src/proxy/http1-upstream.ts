/**
 * HTTP/1.1 keep-alive pools to backends on raw sockets: one pool per backend,
 * idle sockets reused last-in first-out, at most `connectionsPerBackend` open
 * (requests beyond wait in order). Each request is written as one buffer (head)
 * plus its streamed body. Responses are read into one shared buffer (`onread`,
 * no Readable stream); the head is parsed here (http1-parser.ts) and, for a
 * client that speaks HTTP/1.1 too, its field lines pass through without a
 * header map; the body is streamed to the sink with backpressure. A pooled socket the
 * backend closed while idle is detected on use and the request sent again on
 * a fresh socket when it is safe (idempotent without a body, or nothing of it
 * was answered).
 */
import { connect as netConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { IncomingHttpHeaders } from 'node:http';
import type { Backend } from '../cluster/backend.ts';
import { UpstreamError } from './http-errors.ts';
import { isIdempotent } from './http-headers.ts';
import {
  ChunkedDecoder,
  emptyHead,
  HttpParseError,
  type ChunkSink,
  type MessageHead,
  parseHead,
  type RawFields,
} from './http1-parser.ts';
import type {
  RawResponseHead,
  ResponseSink,
  Upstream,
  UpstreamCall,
  UpstreamRequest,
  UpstreamSettings,
} from './http-upstream.ts';
import { SHARED_READ_BUFFER, sharedView } from './socket-reads.ts';
import { SourceAddressPool } from './source-address.ts';
import { writeDirectOutcome, WROTE } from './socket-writes.ts';

const RESPONSE_LIMITS = { maxSize: 65_536, maxCount: 500 };
/** Idle pooled sockets older than this are closed (backends usually time out around 60 s). */
const IDLE_MS = 30_000;
/**
 * Upstream sockets read (node's `onread`) into the process's shared read
 * buffer (socket-reads.ts): no buffer is allocated per read, and no Readable
 * stream sits between the socket and the parser. Each read is handled before
 * the next one can happen, so the buffer can be shared — as long as nothing
 * keeps a view of it: every byte kept past the read callback (a partial head,
 * body data handed to the sink, trailers) is copied.
 */
const READ_BUFFER = SHARED_READ_BUFFER;

/**
 * A response head whose field lines pass through (see RawResponseHead): read
 * from the read buffer (where `raw` says they are) until `settle()` copies
 * them out, at the end of the read that delivered it. One per socket, used
 * again for the next response when the sink took the lines during the read
 * (then it has written them and holds it no longer).
 */
class RawHead implements RawResponseHead {
  status = 0;
  contentLength = -1;
  linesLength = 0;
  /** The read buffer, and where the lines are in it; undefined once settled. */
  #buf: Buffer | undefined;
  #raw: RawFields | undefined;
  /** The lines, copied out. */
  #lines: Buffer | undefined;

  /** Point at the head `raw` found in `buf`. */
  set(status: number, contentLength: number, buf: Buffer, raw: RawFields): this {
    this.status = status;
    this.contentLength = contentLength;
    this.#buf = buf;
    this.#raw = raw;
    this.#lines = undefined;
    this.#taken = false;
    let len = raw.end - raw.start;
    const drop = raw.drop;
    for (let k = 0; k < raw.dropped; k += 2) len -= drop[k + 1]! - drop[k]!;
    this.linesLength = len;
    return this;
  }

  /** The lines were copied out by the sink during the read (it writes them once): nothing to keep. */
  #taken = false;

  /** Settled after the sink took its lines: nobody holds it, it may serve the next response. */
  get reusable(): boolean {
    return this.#taken && this.#buf === undefined;
  }

  copyLines(out: Buffer, offset: number): number {
    if (this.#lines === undefined) this.#taken = true;
    return this.#copy(out, offset);
  }

  #copy(out: Buffer, offset: number): number {
    const lines = this.#lines;
    if (lines !== undefined) return lines.copy(out, offset);
    if (this.#buf === undefined) throw new Error('the response head was read after it was written');
    return copyLines(this.#buf, this.#raw!, out, offset);
  }

  /** The read is over: keep a copy of the lines, unless the sink has already written them. */
  settle(): void {
    if (this.#buf === undefined) return;
    if (this.#taken) {
      this.#buf = undefined;
      this.#raw = undefined;
      return;
    }
    const out = Buffer.allocUnsafe(this.linesLength);
    copyLines(this.#buf, this.#raw!, out, 0);
    this.#lines = out;
    this.#buf = undefined;
    this.#raw = undefined;
  }
}

/** Copy the field lines `raw` found in `buf`, without the dropped ones, into `out` at `offset`. */
function copyLines(buf: Buffer, raw: RawFields, out: Buffer, offset: number): number {
  const drop = raw.drop;
  const n = raw.dropped;
  let o = offset;
  let from = raw.start;
  for (let k = 0; k < n; k += 2) {
    o += buf.copy(out, o, from, drop[k]);
    from = drop[k + 1]!;
  }
  o += buf.copy(out, o, from, raw.end);
  return o - offset;
}

/** The body goes chunked: there is one and no Content-Length says how long. */
function chunkedBody(req: UpstreamRequest): boolean {
  return req.body !== undefined && req.headers['content-length'] === undefined;
}

/** Serialize a request head: start line, host, forwarded headers, framing. */
function requestHead(req: UpstreamRequest, chunked: boolean, backendHost: string): string {
  // HTTP/1.1 needs a Host: an HTTP/1.0 client without one gets the backend's address (as nginx does).
  let head = `${req.method} ${req.path} HTTP/1.1\r\nhost: ${req.authority ?? backendHost}\r\n`;
  const headers = req.headers;
  for (const name in headers) {
    if (name === 'host' || name === 'expect' || name.charCodeAt(0) === 58) continue;
    const v = headers[name]!;
    if (typeof v === 'string') head += `${name}: ${v}\r\n`;
    else for (const one of v) head += `${name}: ${one}\r\n`;
  }
  return chunked ? `${head}transfer-encoding: chunked\r\n\r\n` : `${head}\r\n`;
}

/** One request on one pooled socket. */
class Call implements UpstreamCall, ChunkSink {
  // Set by `reuse`, for the first request too.
  pool!: Pool;
  req!: UpstreamRequest;
  sink!: ResponseSink;
  conn: Conn | undefined;
  /** The response head has arrived; whether it lets the socket stay open. */
  headSeen!: boolean;
  keepAlive!: boolean;
  /** Response body bytes left (Content-Length framing), -1 for chunked or until close. */
  remaining!: number;
  decoder: ChunkedDecoder | undefined;
  /** The request (head and body) is fully written. */
  sent!: boolean;
  /** A response byte arrived. */
  answered!: boolean;
  done!: boolean;
  aborted!: boolean;
  /** Sent again once on a fresh socket after a pooled one turned out closed. */
  resent!: boolean;
  chunkedBody!: boolean;
  bodyStarted!: boolean;

  constructor(pool: Pool, req: UpstreamRequest, sink: ResponseSink) {
    this.reuse(pool, req, sink);
  }

  /**
   * Over and let go of by its socket (released to the pool whole: not
   * aborted, not left on a socket that closes later), so nothing but its
   * sink refers to it: it may carry the sink's next request.
   */
  get reusable(): boolean {
    return this.done && !this.aborted && this.conn === undefined;
  }

  /** Carry a request (another one: see `reusable`): every field starts over. */
  reuse(pool: Pool, req: UpstreamRequest, sink: ResponseSink): this {
    this.pool = pool;
    this.req = req;
    this.sink = sink;
    this.headSeen = false;
    this.keepAlive = false;
    this.remaining = -1;
    this.decoder = undefined;
    this.sent = false;
    this.answered = false;
    this.done = false;
    this.aborted = false;
    this.resent = false;
    this.chunkedBody = false;
    this.bodyStarted = false;
    return this;
  }

  /** `data` is a view of the shared read buffer: the sink copies what it keeps. */
  chunkData(data: Buffer): void {
    if (!this.sink.onData(data, true)) this.conn?.pause();
  }

  abort(): void {
    if (this.done || this.aborted) return;
    this.aborted = true;
    const conn = this.conn;
    if (conn !== undefined) conn.destroy();
    else this.pool.unqueue(this);
  }

  resume(): void {
    this.conn?.resume();
  }
}

/** A socket to a backend and the response being read on it. */
class Conn {
  readonly pool: Pool;
  readonly socket: Socket;
  call: Call | undefined;
  /** Bytes of a response head not complete yet. */
  pending: Buffer | undefined;
  /** Where the last response head's field lines are (reused). */
  readonly #raw: RawFields = { start: 0, end: 0, drop: [], dropped: 0, opaque: false };
  /** The last response head (filled in place: its fields are read during the read that parsed it). */
  readonly #head: MessageHead = emptyHead();
  connected = false;
  reused = false;
  /** When it went back to the pool idle (performance.now()). */
  idleSince = 0;
  closed = false;

  constructor(
    pool: Pool,
    host: string,
    port: number,
    localAddress: string | undefined,
    keepAliveMs: number | undefined,
  ) {
    this.pool = pool;
    const socket = netConnect({
      host,
      port,
      localAddress,
      noDelay: true,
      // An idle pooled socket to a host that vanished is closed, not picked for the next request.
      keepAlive: keepAliveMs !== undefined,
      keepAliveInitialDelay: keepAliveMs,
      onread: { buffer: READ_BUFFER, callback: this.#onRead },
    });
    this.socket = socket;
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    socket.on('drain', this.#onDrain);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reading stopped for backpressure (the client is slower than the backend). */
  #paused = false;

  pause(): void {
    this.#paused = true;
    this.socket.pause();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.socket.resume();
  }

  readonly #onError = (): void => {};

  readonly #onDrain = (): void => {
    const body = this.call?.req.body;
    if (body !== undefined && this.call!.bodyStarted) body.resume();
  };

  readonly #onClose = (): void => {
    this.closed = true;
    const call = this.call;
    this.call = undefined;
    this.pool.forget(this);
    if (call === undefined || call.done) return;
    if (call.headSeen && call.remaining < 0 && call.decoder === undefined && !call.aborted) {
      // Delimited by close: the end of the body.
      this.#finish(call, undefined, false);
      return;
    }
    if (call.aborted) return;
    this.#detach(call);
    if (!this.connected) {
      call.sink.onError(new UpstreamError('connect-failed', false, 'connection refused or timed out'));
      return;
    }
    // A pooled socket closed under a request nobody answered: send it again on a fresh one.
    const req = call.req;
    if (this.reused && !call.answered && !call.resent && (!call.bodyStarted || req.body === undefined)) {
      if (isIdempotent(req.method) || !call.sent) {
        call.resent = true;
        this.pool.send(call, true);
        return;
      }
    }
    call.sink.onError(
      new UpstreamError(
        'upstream-reset',
        true,
        call.answered ? 'the backend closed during its response' : 'the backend closed before responding',
      ),
    );
  };

  #detach(call: Call): void {
    const body = call.req.body;
    if (body !== undefined && call.bodyStarted) {
      body.removeListener('data', this.#onBody);
      body.removeListener('end', this.#onBodyEnd);
    }
  }

  /** Write the request: head as one buffer, then the body as it comes. */
  write(call: Call): void {
    this.call = call;
    call.conn = this;
    const req = call.req;
    const raw = req.rawHead;
    const chunked = raw !== undefined ? raw.chunked : chunkedBody(req);
    const head = raw !== undefined ? raw.bytes : requestHead(req, chunked, this.pool.hostHeader);
    call.chunkedBody = chunked;
    const body = call.req.body;
    if (body === undefined) {
      call.sent = true;
      const outcome = writeDirectOutcome(this.socket, head);
      raw?.written?.(outcome === WROTE);
      return;
    }
    // A body is read only once the socket is connected: a request whose connection fails
    // still has its whole body, and may be retried on another backend.
    if (!this.connected) {
      this.#waitingHead = head;
      return;
    }
    this.#startBody(call, head);
  }

  #waitingHead: string | Buffer | undefined;

  /** Connected: send the head and body held back until now. */
  onConnect(): void {
    this.connected = true;
    const head = this.#waitingHead;
    this.#waitingHead = undefined;
    const call = this.call;
    if (head !== undefined && call !== undefined && !call.aborted) this.#startBody(call, head);
  }

  #startBody(call: Call, head: string | Buffer): void {
    const body = call.req.body!;
    this.socket.write(head, 'latin1');
    call.bodyStarted = true;
    body.on('data', this.#onBody);
    body.once('end', this.#onBodyEnd);
  }

  readonly #onBody = (chunk: Buffer): void => {
    const call = this.call;
    if (call === undefined) return;
    let ok: boolean;
    if (call.chunkedBody) {
      if (chunk.length === 0) return;
      this.socket.cork();
      this.socket.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
      this.socket.write(chunk);
      ok = this.socket.write('\r\n', 'latin1');
      this.socket.uncork();
    } else ok = this.socket.write(chunk);
    if (!ok) call.req.body!.pause();
  };

  readonly #onBodyEnd = (): void => {
    const call = this.call;
    if (call === undefined) return;
    call.req.body!.removeListener('data', this.#onBody);
    if (call.chunkedBody) this.socket.write('0\r\n\r\n', 'latin1');
    call.sent = true;
    if (call.done) this.#release(call);
  };

  /** A head delivered during the current read, still reading its lines from the read buffer. */
  #unsettled: RawHead | undefined;
  /** The last head delivered (see RawHead). */
  #rawHead: RawHead | undefined;

  /**
   * `nread` bytes arrived in READ_BUFFER (see there: copy what is kept).
   * Returns false to stop reading (backpressure: the sink is full).
   */
  readonly #onRead = (nread: number, data: Buffer): boolean => {
    const more = this.#read(nread, data);
    const head = this.#unsettled;
    if (head !== undefined) {
      this.#unsettled = undefined;
      head.settle();
    }
    return more;
  };

  #read(nread: number, data: Buffer): boolean {
    const call = this.call;
    if (call === undefined || call.done) {
      // Bytes nobody asked for: the socket is out of step.
      this.socket.destroy();
      return false;
    }
    call.answered = true;
    let buf = data;
    let i = 0;
    let end = nread;
    try {
      while (i < end) {
        if (!call.headSeen) {
          if (this.pending !== undefined) {
            buf = Buffer.concat([this.pending, buf.subarray(i, end)]);
            i = 0;
            end = buf.length;
            this.pending = undefined;
          }
          // Field lines pass through as they came (RawResponseHead); a map only for rare heads.
          const head = parseHead(buf, i, false, RESPONSE_LIMITS, end, this.#raw, this.#head);
          if (head === undefined) {
            this.pending = Buffer.from(buf.subarray(i, end));
            return true;
          }
          const headStart = i;
          i = head.end;
          if (head.status < 200) {
            if (head.status === 101) throw new HttpParseError('bad-request', 'unexpected 101');
            continue; // 100 Continue, 103 Early Hints: not forwarded
          }
          call.headSeen = true;
          call.keepAlive = head.keepAlive;
          const noBody =
            call.req.method === 'HEAD' ||
            head.status === 204 ||
            head.status === 304 ||
            head.contentLength === 0;
          this.#deliverHead(call, head, buf, headStart, end, noBody);
          if (noBody) {
            // Extra bytes after a complete response: the socket is out of step and not reused.
            this.#finish(call, undefined, call.keepAlive && i === end);
            return true;
          }
          if (call.done) return true;
          if (head.chunked) call.decoder = new ChunkedDecoder(RESPONSE_LIMITS.maxSize);
          else call.remaining = head.contentLength; // -1: until close
          continue;
        }
        if (call.decoder !== undefined) {
          i = call.decoder.feed(buf, i, end, call);
          if (call.decoder.done) {
            const trailers = call.decoder.trailers() as IncomingHttpHeaders | undefined;
            this.#finish(call, trailers, call.keepAlive && i === end);
            return true;
          }
          continue;
        }
        if (call.remaining < 0) {
          call.chunkData(buf === READ_BUFFER ? sharedView(i, end) : buf.subarray(i, end));
          return true;
        }
        const n = Math.min(call.remaining, end - i);
        call.remaining -= n;
        call.chunkData(buf === READ_BUFFER ? sharedView(i, i + n) : buf.subarray(i, i + n));
        i += n;
        if (call.remaining === 0) {
          this.#finish(call, undefined, call.keepAlive && i === end);
          return true;
        }
      }
    } catch (err) {
      if (!(err instanceof HttpParseError)) throw err;
      this.#detach(call);
      this.call = undefined;
      call.done = true;
      this.socket.destroy();
      call.sink.onError(new UpstreamError('bad-response', true, err.message, { cause: err }));
    }
    return true;
  }

  /** Hand a head parsed in raw mode to the sink: its lines as they came, or a header map when they cannot pass as they are. */
  #deliverHead(
    call: Call,
    head: MessageHead,
    buf: Buffer,
    start: number,
    end: number,
    endStream: boolean,
  ): void {
    const sink = call.sink;
    const raw = this.#raw;
    if (!raw.opaque) {
      const spare = this.#rawHead;
      const rawHead = (spare !== undefined && spare.reusable ? spare : (this.#rawHead = new RawHead())).set(
        head.status,
        head.contentLength,
        buf,
        raw,
      );
      this.#unsettled = rawHead;
      sink.onRawHead(rawHead, endStream);
      return;
    }
    // Parsed again, into a map (rare: a Connection option naming fields, a repeated Content-Length).
    const headers = parseHead(buf, start, false, RESPONSE_LIMITS, end)!.headers;
    sink.onHeaders(head.status, headers, endStream);
  }

  #finish(call: Call, trailers: IncomingHttpHeaders | undefined, keepAlive: boolean): void {
    call.done = true;
    if (!keepAlive) this.socket.end();
    // The request body may still be on its way (an early answer): the socket cannot be reused then.
    if (call.sent) this.#release(call);
    else {
      this.#detach(call);
      this.call = undefined;
      this.socket.destroy();
    }
    call.sink.onEnd(trailers);
  }

  #release(call: Call): void {
    if (this.call !== call) return;
    this.#detach(call);
    this.call = undefined;
    call.conn = undefined;
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    this.resume();
    this.pool.release(this);
  }
}

/** The sockets to one backend. */
class Pool {
  readonly backend: Backend;
  readonly #settings: UpstreamSettings;
  /** The upstream's, shared by its pools: one round of the list for all backends, as TCP has. */
  readonly #sources: SourceAddressPool;
  readonly idle: Conn[] = [];
  readonly queue: Call[] = [];
  open = 0;
  closing = false;
  onEmpty: (() => void) | undefined;
  /** `host:port` of the backend, for requests that came without a Host. */
  readonly hostHeader: string;

  constructor(backend: Backend, settings: UpstreamSettings, sources: SourceAddressPool) {
    this.backend = backend;
    this.#settings = settings;
    this.#sources = sources;
    const { host, port } = backend.address;
    this.hostHeader = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  }

  /** Send `call` on an idle socket, a new one, or queue it. `fresh`: never on a pooled socket. */
  send(call: Call, fresh: boolean): void {
    if (!fresh) {
      const conn = this.idle.pop();
      if (conn !== undefined) {
        conn.reused = true;
        conn.write(call);
        return;
      }
    }
    if (this.open >= this.#settings.connectionsPerBackend && !fresh) {
      this.queue.push(call);
      return;
    }
    this.#connect().write(call);
  }

  #connect(): Conn {
    const { host, port } = this.backend.address;
    const conn = new Conn(this, host, port, this.#sources.next(host), this.#settings.keepAliveMs);
    const socket = conn.socket;
    this.open++;
    const timeout = this.#settings.connectTimeoutMs;
    if (timeout > 0) socket.setTimeout(timeout, () => socket.destroy());
    socket.once('connect', () => {
      if (timeout > 0) socket.setTimeout(0);
      conn.onConnect();
    });
    return conn;
  }

  release(conn: Conn): void {
    // Nearly always empty: no call into Array.prototype.shift per request then.
    const next = this.queue.length === 0 ? undefined : this.queue.shift();
    if (next !== undefined) {
      conn.reused = true;
      conn.write(next);
      return;
    }
    if (this.closing) {
      conn.socket.end();
      return;
    }
    // performance.now(), not Date.now(): Date.now()'s values are too large
    // for a small integer, so each call returns a new 16-byte heap number.
    conn.idleSince = performance.now();
    this.idle.push(conn);
  }

  unqueue(call: Call): void {
    const i = this.queue.indexOf(call);
    if (i >= 0) this.queue.splice(i, 1);
  }

  forget(conn: Conn): void {
    this.open--;
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    // A queued request takes the freed slot.
    if (this.queue.length > 0 && this.open < this.#settings.connectionsPerBackend) {
      this.#connect().write(this.queue.shift()!);
    }
    if (this.open === 0) this.onEmpty?.();
  }

  /** Close idle sockets older than `IDLE_MS` (all of them when closing). */
  sweepIdle(now: number): void {
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const conn = this.idle[i]!;
      if (this.closing || now - conn.idleSince > IDLE_MS) conn.socket.end();
    }
  }

  close(): Promise<void> {
    this.closing = true;
    this.sweepIdle(performance.now());
    if (this.open === 0) return Promise.resolve();
    return new Promise((resolve) => (this.onEmpty = resolve));
  }
}

/** HTTP/1.1 keep-alive pools on raw sockets, one per backend. */
export class Http1Upstream implements Upstream {
  readonly #pools = new Map<Backend, Pool>();
  readonly #settings: UpstreamSettings;
  readonly #sources: SourceAddressPool;

  constructor(settings: UpstreamSettings) {
    this.#settings = settings;
    this.#sources = new SourceAddressPool(settings.sourceAddresses);
  }

  request(backend: Backend, req: UpstreamRequest, sink: ResponseSink, spare?: UpstreamCall): UpstreamCall {
    let pool = this.#pools.get(backend);
    if (pool === undefined)
      this.#pools.set(backend, (pool = new Pool(backend, this.#settings, this.#sources)));
    const call =
      spare instanceof Call && spare.sink === sink && spare.reusable
        ? spare.reuse(pool, req, sink)
        : new Call(pool, req, sink);
    pool.send(call, false);
    return call;
  }

  sweep(keep: ReadonlySet<Backend>): void {
    const now = performance.now();
    for (const [backend, pool] of this.#pools) {
      if (keep.has(backend)) {
        pool.sweepIdle(now);
        continue;
      }
      this.#pools.delete(backend);
      void pool.close(); // in-flight requests finish, then the sockets close
    }
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.close()));
  }
}
