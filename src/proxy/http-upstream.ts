/**
 * Pooled connections from holdfast to backends: the interfaces both upstream
 * kinds share, and HTTP/2 sessions (node:http2, needed for gRPC), a few per
 * backend. HTTP/1.1 pools are in http1-upstream.ts. Pools of backends that
 * left the cluster are drained, not cut.
 */
import {
  connect as h2connect,
  constants as h2c,
  type ClientHttp2Session,
  type ClientHttp2Stream,
} from 'node:http2';
import type { IncomingHttpHeaders } from 'node:http';
import { connect as netConnect } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Backend } from '../cluster/backend.ts';
import type { Clock } from '../cluster/clock.ts';
import type { KeepaliveOptions } from './http-keepalive.ts';
import { SESSION_WINDOW, startKeepalive } from './http-keepalive.ts';
import type { HeaderMap } from './http-headers.ts';
import { type ProxyFailure, UpstreamError } from './http-errors.ts';
import { SourceAddressPool } from './source-address.ts';

/**
 * A response head as an HTTP/1.1 backend sent it, for an HTTP/1.1 client:
 * its field lines pass through without a header map being built. While the
 * read that delivered it lasts, the lines are read from the read buffer
 * itself; the head copies them out before that buffer is read into again.
 */
export interface RawResponseHead {
  readonly status: number;
  /** Content-Length, -1 when none was given (the lines keep it). */
  readonly contentLength: number;
  /** Bytes of the field lines (each ending in CRLF, without hop-by-hop and framing fields). */
  readonly linesLength: number;
  /**
   * Copy the field lines into `out` at `offset`; returns the bytes copied
   * (`linesLength`). For writing the head out, once: a head whose lines were
   * copied during the read that delivered it keeps no copy of them.
   */
  copyLines(out: Buffer, offset: number): number;
}

/** What an upstream attempt reports back, in order: headers, data…, end — or error. */
export interface ResponseSink {
  onHeaders(status: number, headers: IncomingHttpHeaders, endStream: boolean): void;
  /** Instead of onHeaders, from an HTTP/1.1 backend: the head as it sent it (field lines passed through). */
  onRawHead(head: RawResponseHead, endStream: boolean): void;
  /**
   * Return false to pause the backend until `resume()`. `transient`: the
   * chunk is a view of a read buffer, valid only during this call (copy what
   * is kept); otherwise it is the sink's to keep.
   */
  onData(chunk: Buffer, transient?: boolean): boolean;
  onEnd(trailers: IncomingHttpHeaders | undefined): void;
  onError(err: UpstreamError): void;
}

/** A request in flight to one backend. */
export interface UpstreamCall {
  abort(): void;
  resume(): void;
}

/**
 * A request head as an HTTP/1.x client sent it, ready for an HTTP/1.1
 * backend: no header map is built for it unless something asks for one.
 */
export interface RawRequestHead {
  /**
   * The whole head to send: the client's start line and field lines (in their
   * case and order, hop-by-hop ones left out), this hop's forwarding fields,
   * the framing field when the body goes chunked, and the blank line. Not
   * changed once made (a write may still hold it).
   */
  readonly bytes: Buffer;
  /** The body is sent chunked (the client sent it so; no Content-Length is among the fields). */
  readonly chunked: boolean;
  /**
   * Optional, called after each write of `bytes`: `whole` when the kernel
   * took them all at once (nothing holds them any more), false when some
   * stay queued.
   */
  written?(whole: boolean): void;
}

export interface UpstreamRequest {
  method: string;
  path: string;
  authority: string | undefined;
  /** Read only when needed: with `rawHead`, an HTTP/1.1 upstream never reads it. */
  headers: HeaderMap;
  body: Readable | undefined;
  /** Optional: the head as an HTTP/1.x client sent it, which HTTP/1.1 upstreams send instead of `headers`. */
  readonly rawHead?: RawRequestHead | undefined;
}

export interface UpstreamSettings {
  connectTimeoutMs: number;
  connectionsPerBackend: number;
  sessionsPerBackend: number;
  ping: KeepaliveOptions;
  /**
   * `sourceAddresses`: local addresses to open connections to backends from,
   * round the list (empty: the kernel chooses). A list, not the pool itself,
   * so that a reload that changes it is seen as a change (http-forward.ts).
   */
  sourceAddresses: readonly string[];
  /** `tcpKeepAlive` in ms, or undefined for off: set on each socket as it is opened. */
  keepAliveMs: number | undefined;
}

/** A family of per-backend pools. */
export interface Upstream {
  /**
   * `spare`: the call of a request this sink served before, which the
   * upstream may use again if it is its own and is over (nothing refers to
   * it any more but the sink).
   */
  request(backend: Backend, req: UpstreamRequest, sink: ResponseSink, spare?: UpstreamCall): UpstreamCall;
  /** Drain (not cut) pools of backends not in `keep`. */
  sweep(keep: ReadonlySet<Backend>): void;
  /** Drain every pool; resolves when their in-flight requests are done. */
  close(): Promise<void>;
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'UND_ERR_CONNECT_TIMEOUT',
  'EAI_AGAIN',
]);

function classify(err: Error & { code?: string }, started: boolean): UpstreamError {
  const code = err.code ?? '';
  let kind: ProxyFailure = 'upstream-reset';
  let sent = true;
  if (CONNECT_CODES.has(code)) {
    kind = 'connect-failed';
    sent = false;
  } else if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') kind = 'upstream-timeout';
  else if (
    code.startsWith('HPE_') ||
    code === 'UND_ERR_INFO' ||
    code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
  ) {
    kind = 'bad-response';
  }
  if (started && kind === 'connect-failed') kind = 'upstream-reset';
  return new UpstreamError(kind, sent, `${code} ${err.message}`.trim(), { cause: err });
}

interface Session {
  readonly session: ClientHttp2Session;
  active: number;
  /** Last stream id the backend will process, once it sent GOAWAY. */
  goaway: number | undefined;
}

/**
 * Whether `ClientHttp2Session.request` takes raw name/value pairs (Node
 * 22.17 and 24; holdfast supports Node from 22.12).
 */
const [NODE_MAJOR, NODE_MINOR] = process.versions.node.split('.').map(Number) as [number, number];
const RAW_FIELDS = NODE_MAJOR >= 24 || (NODE_MAJOR === 22 && NODE_MINOR >= 17);

/**
 * A request's pseudo-headers and fields, for `ClientHttp2Session.request`.
 * The header map belongs to the downstream (a retry, the pick context may
 * read it again), so nothing is added to it. Given raw pairs that already
 * hold every pseudo-header, Node builds its header list from them as they
 * are; a header map it copies first (into an object of its own, to add the
 * pseudo-headers it lacks), so the pairs take the place of that copy rather
 * than adding to it. Older Node gets a copy of the map with them added.
 */
function requestFields(req: UpstreamRequest): string[] | HeaderMap {
  const headers = req.headers;
  if (!RAW_FIELDS) {
    const map: HeaderMap = { ...headers, ':method': req.method, ':path': req.path, ':scheme': 'http' };
    if (req.authority !== undefined) map[':authority'] = req.authority;
    return map;
  }
  const fields = [':method', req.method, ':path', req.path, ':scheme', 'http'];
  // Without one, Node adds the session's own (the backend's address).
  if (req.authority !== undefined) fields.push(':authority', req.authority);
  for (const name in headers) {
    const value = headers[name]!;
    if (typeof value === 'string') fields.push(name, value);
    // A repeated field: a pair per value, as Node sends an array value.
    else for (let i = 0; i < value.length; i++) fields.push(name, value[i]!);
  }
  return fields;
}

/** Default before the backend's SETTINGS arrive (RFC 9113 recommends ≥ 100). */
const DEFAULT_STREAMS = 100;

/**
 * HTTP/2 sessions per backend. Streams go to the first session with room
 * under the backend's MAX_CONCURRENT_STREAMS; when all are full another
 * session opens (up to `sessionsPerBackend`). Every session is kept alive and
 * checked with PINGs.
 */
export class Http2Upstream implements Upstream {
  readonly #sessions = new Map<Backend, Session[]>();
  readonly #settings: UpstreamSettings;
  readonly #sources: SourceAddressPool;
  readonly #clock: Clock;
  readonly #log: Logger;

  constructor(settings: UpstreamSettings, clock: Clock, log: Logger) {
    this.#settings = settings;
    this.#sources = new SourceAddressPool(settings.sourceAddresses);
    this.#clock = clock;
    this.#log = log;
  }

  /** Sessions open to `backend` now (for tests and status). */
  sessionsOf(backend: Backend): number {
    return this.#sessions.get(backend)?.length ?? 0;
  }

  #open(backend: Backend, list: Session[]): Session {
    const { host, port } = backend.address;
    // TCP keepalive as well as PING: it still finds a vanished host with pings off.
    const keepAliveMs = this.#settings.keepAliveMs;
    const session = h2connect(`http://${host.includes(':') ? `[${host}]` : host}:${port}`, {
      settings: { enablePush: false, initialWindowSize: 1 << 20 },
      maxSessionMemory: 64,
      createConnection: () =>
        netConnect({
          host,
          port,
          noDelay: true,
          localAddress: this.#sources.next(host),
          keepAlive: keepAliveMs !== undefined,
          keepAliveInitialDelay: keepAliveMs,
        }),
    });
    const entry: Session = { session, active: 0, goaway: undefined };
    list.push(entry);
    const remove = (): void => {
      const i = list.indexOf(entry);
      if (i >= 0) list.splice(i, 1);
    };
    session.on('error', () => {});
    session.once('connect', () => {
      try {
        session.setLocalWindowSize(SESSION_WINDOW);
      } catch {
        // closed meanwhile
      }
    });
    session.on('goaway', (_code: number, last: number) => {
      entry.goaway = last;
      remove();
    });
    session.once('close', remove);
    const connectTimer = this.#clock.setTimer(() => {
      if (!session.connecting) return;
      const err = Object.assign(new Error('connect timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' });
      session.destroy(err);
    }, this.#settings.connectTimeoutMs);
    session.once('connect', () => connectTimer.cancel());
    session.once('close', () => connectTimer.cancel());
    startKeepalive(session, this.#settings.ping, this.#clock, () => {
      this.#log.warn({ backend: backend.key }, 'backend HTTP/2 session missed its PING ACK; closing it');
      remove();
      session.destroy(Object.assign(new Error('PING timeout'), { code: 'ERR_HTTP2_PING_TIMEOUT' }));
    });
    return entry;
  }

  #pick(backend: Backend): Session {
    let list = this.#sessions.get(backend);
    if (list === undefined) this.#sessions.set(backend, (list = []));
    let least: Session | undefined;
    for (const s of list) {
      if (s.session.closed || s.session.destroyed) continue;
      const max = s.session.remoteSettings?.maxConcurrentStreams ?? DEFAULT_STREAMS;
      if (s.active < Math.min(max, 2 ** 31)) return s;
      if (least === undefined || s.active < least.active) least = s;
    }
    if (least === undefined || list.length < this.#settings.sessionsPerBackend)
      return this.#open(backend, list);
    return least; // every session full: nghttp2 queues the stream until one has room
  }

  request(backend: Backend, req: UpstreamRequest, sink: ResponseSink): UpstreamCall {
    const entry = this.#pick(backend);
    const body = req.body;
    let stream: ClientHttp2Stream;
    try {
      stream = entry.session.request(requestFields(req), { endStream: body === undefined });
    } catch (err) {
      queueMicrotask(() => sink.onError(classify(err as Error, false)));
      return { abort: () => {}, resume: () => {} };
    }
    entry.active++;
    let started = false;
    let done = false;
    let aborted = false;
    let trailers: IncomingHttpHeaders | undefined;
    let failure: Error | undefined;
    stream.on('response', (h: IncomingHttpHeaders & { ':status'?: number }, flags: number) => {
      const status = Number(h[':status']);
      if (status < 200) return;
      started = true;
      sink.onHeaders(status, h, (flags & h2c.NGHTTP2_FLAG_END_STREAM) !== 0);
    });
    stream.on('trailers', (t: IncomingHttpHeaders) => (trailers = t));
    stream.on('data', (chunk: Buffer) => {
      if (!sink.onData(chunk)) stream.pause();
    });
    stream.on('end', () => {
      if (!started) return;
      // Node also ends the readable side of a stream whose session was torn
      // down (the backend's socket closed mid-response), with no END_STREAM
      // received: the stream is then already destroyed or reset. That
      // response is cut short, not complete; 'close' reports it as a reset.
      if (stream.destroyed || stream.rstCode !== h2c.NGHTTP2_NO_ERROR) return;
      done = true;
      sink.onEnd(trailers);
    });
    stream.on('error', (err: Error) => (failure = err));
    stream.on('close', () => {
      entry.active--;
      if (done || aborted) return;
      done = true;
      const id = stream.id;
      const refused =
        stream.rstCode === h2c.NGHTTP2_REFUSED_STREAM ||
        id === undefined ||
        (entry.goaway !== undefined && id > entry.goaway);
      if (failure !== undefined && !refused) return sink.onError(classify(failure, started));
      const code = stream.rstCode;
      if (refused) {
        const kind =
          failure !== undefined && CONNECT_CODES.has((failure as { code?: string }).code ?? '')
            ? 'connect-failed'
            : 'upstream-reset';
        return sink.onError(
          new UpstreamError(kind, false, `stream refused (rst ${code})`, { cause: failure }),
        );
      }
      sink.onError(
        new UpstreamError('upstream-reset', true, `stream reset by the backend (rst ${code})`, {
          cause: failure,
        }),
      );
    });
    if (body !== undefined) {
      // Start reading the client's body only once the stream exists on the wire,
      // so a request that never reaches the backend can still be retried.
      const send = (): void => {
        body.pipe(stream);
        body.once('error', () => stream.close(h2c.NGHTTP2_CANCEL));
      };
      if (stream.pending) stream.once('ready', send);
      else send();
    }
    return {
      abort: () => {
        if (done || aborted) return;
        aborted = true;
        if (body !== undefined) body.unpipe(stream);
        stream.close(h2c.NGHTTP2_CANCEL);
      },
      resume: () => stream.resume(),
    };
  }

  sweep(keep: ReadonlySet<Backend>): void {
    for (const [backend, list] of this.#sessions) {
      if (keep.has(backend)) continue;
      this.#sessions.delete(backend);
      for (const s of list) s.session.close(); // GOAWAY; in-flight streams finish
    }
  }

  async close(): Promise<void> {
    const all = [...this.#sessions.values()].flat();
    this.#sessions.clear();
    await Promise.all(
      all.map((s) =>
        s.session.closed
          ? Promise.resolve()
          : new Promise<void>((resolve) => s.session.close(() => resolve())),
      ),
    );
  }
}
