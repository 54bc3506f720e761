/**
 * HTTP/2 downstream (cleartext prior knowledge, or TLS with ALPN `h2`): each
 * stream is balanced on its own (http-forward.ts). Sessions are pinged,
 * closed with GOAWAY at `maxConnectionAge`, on drain and on shutdown, and
 * guarded against rapid-reset and CONTINUATION floods (GOAWAY
 * ENHANCE_YOUR_CALM from node's HTTP/2 core).
 */
import {
  constants as h2c,
  createServer,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { Socket } from 'node:net';
import type { Timer } from '../cluster/clock.ts';
import type { ServiceConfig } from '../config/schema.ts';
import type { Http2Handler } from './http.ts';
import { errorReply, grpcErrorHeaders, type ProxyFailure } from './http-errors.ts';
import type { Downstream, HttpPlane } from './http-forward.ts';
import {
  appendForwarded,
  forwardableHeaders,
  type HeaderMap,
  HOP_BY_HOP,
  isGrpc,
  maxAge,
} from './http-headers.ts';
import { jittered, SESSION_WINDOW, startKeepalive } from './http-keepalive.ts';

const ignore = (): void => {};
const END_STREAM = { endStream: true };
const WAIT_TRAILERS = { waitForTrailers: true };
const NO_TRAILERS = { waitForTrailers: false };
const STATUS_TEXT: Record<number, string> = {};
for (let code = 100; code < 600; code++) STATUS_TEXT[code] = String(code);

/** A client session's addresses and its `Forwarded` element, computed once per session. */
class Peer {
  readonly ip: string;
  readonly port: number | undefined;
  readonly localIp: string | undefined;
  readonly localPort: number | undefined;
  #host: string | undefined;
  #fwd = '';
  constructor(ip: string, port?: number, localIp?: string, localPort?: number) {
    this.ip = ip;
    this.port = port;
    this.localIp = localIp;
    this.localPort = localPort;
  }
  forwardedFor(host: string | undefined): string {
    if (host !== this.#host || this.#fwd === '') {
      this.#host = host;
      const node = this.ip.includes(':') ? `"[${this.ip}]"` : this.ip;
      this.#fwd = `for=${node};proto=http`;
      if (host !== undefined) this.#fwd += `;host="${host.replace(/["\\]/g, '')}"`;
    }
    return this.#fwd;
  }
}
const NO_PEER = new Peer('unknown');

/**
 * Rapid reset (CVE-2023-44487): streams the client opens and resets at once
 * cost the proxy (and perhaps a backend) work each. A session may reset
 * RESET_BURST streams at once and RESET_RATE a second after that; beyond, it
 * gets GOAWAY ENHANCE_YOUR_CALM and is closed. Tighter than nghttp2's own
 * limit, which closes with INTERNAL_ERROR.
 */
const RESET_BURST = 100;
const RESET_RATE = 50;

/** What holdfast keeps for each client session, on the session object itself (one property). */
class SessionState {
  /** The service's plane (for its counters); undefined only for NO_STATE. */
  readonly plane: HttpPlane | undefined;
  #peer: Peer | undefined;
  /** Rapid-reset token bucket: tokens left, and when they were last topped up. */
  resetTokens = RESET_BURST;
  resetAt = 0;
  /** Streams forwarded so far, and those still open (for the idle sweep). */
  started = 0;
  open = 0;
  /** The idle sweep's view: `started` at its last pass, and since when nothing started or was open. */
  idleMark = -1;
  idleSince = 0;

  constructor(plane?: HttpPlane) {
    this.plane = plane;
  }

  /** The client's addresses, read once (session.socket is a Proxy: slow per stream). */
  peer(session: Http2Session): Peer {
    let p = this.#peer;
    if (p === undefined) {
      const socket = session.socket;
      p = new Peer(
        socket.remoteAddress ?? 'unknown',
        socket.remotePort,
        socket.localAddress,
        socket.localPort,
      );
      this.#peer = p;
    }
    return p;
  }
}
const kState = Symbol('holdfast.h2.session');
interface TrackedSession extends ServerHttp2Session {
  [kState]?: SessionState;
}
const NO_STATE = new SessionState();

/** A client reset one of its streams before the response was complete. */
function onAborted(this: ServerHttp2Stream): void {
  const session = this.session as TrackedSession | undefined;
  const st = session?.[kState];
  if (session === undefined || session.destroyed || st === undefined) return;
  const now = performance.now();
  if (st.resetAt === 0) st.resetAt = now;
  st.resetTokens = Math.min(RESET_BURST, st.resetTokens + ((now - st.resetAt) / 1000) * RESET_RATE);
  st.resetAt = now;
  if (--st.resetTokens >= 0) return;
  st.plane?.count('h2-rapid-reset');
  session.goaway(h2c.NGHTTP2_ENHANCE_YOUR_CALM);
  session.destroy();
}

export class Http2DownstreamHandler implements Http2Handler {
  readonly #plane: HttpPlane;
  #server: Http2Server;
  readonly #sessions = new Set<TrackedSession>();
  #idleSweep: Timer | undefined;
  #config: ServiceConfig;
  #draining = false;

  constructor(plane: HttpPlane) {
    this.#plane = plane;
    this.#config = plane.ctx.config;
    this.#server = this.#makeServer(this.#config);
  }

  #makeServer(config: ServiceConfig): Http2Server {
    const server = createServer({
      settings: {
        maxConcurrentStreams: config.http2.maxConcurrentStreams,
        maxHeaderListSize: config.headerLimits.maxSize,
        enablePush: false,
        initialWindowSize: 1 << 20,
      },
      maxHeaderListPairs: config.headerLimits.maxCount,
      // Flood guards: invalid frames and rapid resets end the session with GOAWAY.
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
      streamResetBurst: 200,
      streamResetRate: 50,
      maxSessionMemory: 32,
      unknownProtocolTimeout: 5_000,
    });
    server.on('session', (session: ServerHttp2Session) => this.#onSession(session, config));
    server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number) =>
      this.#onStream(stream, headers, flags),
    );
    server.on('sessionError', (err: Error) => {
      // nghttp2's own guards (CONTINUATION floods, its rapid-reset limit, bad frames) end here,
      // after it sent GOAWAY: count them by kind.
      const flood = /CONTINUATION/i.test(err.message);
      this.#plane.count(flood ? 'h2-continuation-flood' : 'h2-session-error');
      this.#plane.ctx.log.debug(
        { service: this.#plane.ctx.cluster.name, err: err.message },
        'HTTP/2 session error',
      );
    });
    return server;
  }

  configure(config: ServiceConfig): void {
    const listenerChanged =
      JSON.stringify([config.http2, config.headerLimits]) !==
      JSON.stringify([this.#config.http2, this.#config.headerLimits]);
    this.#config = config;
    if (listenerChanged) {
      // New settings apply to new sessions; existing ones are asked to reconnect.
      this.#server = this.#makeServer(config);
      for (const s of this.#sessions) goAway(s);
    }
  }

  /** GOAWAY to every client session; streams in flight finish. */
  drain(): void {
    this.#draining = true;
    for (const s of this.#sessions) goAway(s);
  }

  handleConnection(socket: Socket): void {
    this.#server.emit('connection', socket);
  }

  #onSession(session: TrackedSession, config: ServiceConfig): void {
    const plane = this.#plane;
    if (this.#draining) {
      goAway(session);
      return;
    }
    const state = new SessionState(plane);
    state.idleSince = plane.ctx.clock.now();
    session[kState] = state;
    this.#sessions.add(session);
    session.on('error', ignore);
    // A wide connection window, so many concurrent request bodies are not throttled by it.
    try {
      session.setLocalWindowSize(SESSION_WINDOW);
    } catch {
      // not connected any more: nothing to widen
    }
    session.on('frameError', () => plane.count('h2-frame-error'));
    session.on('goaway', (code: number) => {
      if (code === h2c.NGHTTP2_ENHANCE_YOUR_CALM) plane.count('h2-enhance-your-calm');
    });
    const stopPing = startKeepalive(
      session,
      {
        intervalMs: config.http2.ping.interval,
        timeoutMs: config.http2.ping.timeout,
        jitter: config.http2.ping.jitter,
      },
      plane.ctx.clock,
      () => {
        plane.count('client-ping-timeout');
        session.destroy();
      },
    );
    const age = maxAge(config);
    const ageTimer =
      age > 0 ? plane.ctx.clock.setTimer(() => goAway(session), jittered(age, 0.1)) : undefined;
    this.#scheduleIdleSweep();
    session.once('close', () => {
      this.#sessions.delete(session);
      stopPing();
      ageTimer?.cancel();
    });
  }

  /**
   * Idle sessions (no stream open, none started) get GOAWAY after `clientIdle`
   * (between 1 and 1.25 times it), found by one sweep over the sessions rather
   * than a session timeout, which node:http2 would refresh on every frame.
   * PINGs do not count as activity, so a client that only answers our
   * keepalive is still idle.
   */
  #scheduleIdleSweep(): void {
    const idle = this.#config.httpTimeouts.clientIdle;
    if (this.#idleSweep !== undefined || idle <= 0 || this.#sessions.size === 0) return;
    const clock = this.#plane.ctx.clock;
    this.#idleSweep = clock.setTimer(
      () => {
        this.#idleSweep = undefined;
        const now = clock.now();
        const limit = this.#config.httpTimeouts.clientIdle;
        for (const session of this.#sessions) {
          const st = session[kState];
          if (st === undefined) continue;
          if (st.open > 0 || st.started !== st.idleMark) {
            st.idleMark = st.started;
            st.idleSince = now;
          } else if (limit > 0 && now - st.idleSince >= limit) goAway(session);
        }
        this.#scheduleIdleSweep();
      },
      Math.max(10, Math.min(idle / 4, 60_000)),
    );
  }

  #onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number): void {
    // Module-level listeners: no per-stream closures. 'aborted' (emitted while nghttp2 reads the
    // RST_STREAM) rather than 'close' (a tick later), so a rapid reset is cut before nghttp2's own
    // limit ends the session with INTERNAL_ERROR.
    stream.on('error', ignore);
    stream.on('aborted', onAborted);
    stream.on('close', onStreamClose);
    const method = headers[':method'];
    if (method === 'CONNECT') {
      stream.respond({ ':status': 405, 'x-holdfast-error': 'connect-not-supported' }, END_STREAM);
      return;
    }
    const state = (stream.session as TrackedSession | undefined)?.[kState] ?? NO_STATE;
    state.started++;
    state.open++;
    const down = new Http2Downstream(stream, headers, flags, state);
    (stream as DownstreamStream)[kDown] = down;
    this.#plane.forward(down);
  }
}

/**
 * A backend's response head as node:http2's flat header list (`[name, value,
 * …]`, `:status` first): the same fields `forwardableHeaders` keeps (no
 * hop-by-hop ones, none the `Connection` header names), without building a
 * header object that node would copy again.
 */
function responseHeaderList(status: number, headers: IncomingHttpHeaders): string[] {
  const list: string[] = [':status', STATUS_TEXT[status] ?? String(status)];
  const connection = headers.connection;
  // `keep-alive` and `close` name only hop-by-hop headers: no set needed for them.
  const named =
    connection === undefined || connection === 'keep-alive' || connection === 'close'
      ? undefined
      : connectionNamed(connection);
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || name.charCodeAt(0) === 58 /* ':' */) continue;
    if (HOP_BY_HOP.has(name) || named?.has(name) === true) continue;
    if (typeof value === 'string') list.push(name, value);
    else for (const one of value) list.push(name, one);
  }
  return list;
}

function connectionNamed(connection: string | string[]): Set<string> {
  const named = new Set<string>();
  for (const part of String(connection).split(',')) named.add(part.trim().toLowerCase());
  return named;
}

const kDown = Symbol('holdfast.h2.downstream');
interface DownstreamStream extends ServerHttp2Stream {
  [kDown]?: Http2Downstream;
}

/** A stream closed: tell its exchange. */
function onStreamClose(this: DownstreamStream): void {
  const down = this[kDown];
  if (down === undefined) return;
  this[kDown] = undefined;
  down.closed();
}

class Http2Downstream implements Downstream {
  readonly method: string;
  readonly path: string;
  readonly authority: string | undefined;
  readonly headers: HeaderMap;
  readonly body;
  readonly grpc: boolean;
  readonly pick;
  readonly #stream: ServerHttp2Stream;
  #trailers: HeaderMap | undefined;
  #wantTrailers = false;
  /** The first body chunk, held so that a one-chunk response goes out with its end. */
  #first: Buffer | undefined;

  readonly #session: SessionState;

  constructor(stream: ServerHttp2Stream, h: IncomingHttpHeaders, flags: number, session: SessionState) {
    this.#stream = stream;
    this.#session = session;
    this.method = h[':method'] ?? 'GET';
    this.path = h[':path'] ?? '/';
    this.authority = h[':authority'] ?? h.host;
    this.grpc = isGrpc(h['content-type']);
    const headers = forwardableHeaders(h);
    const http2Session = stream.session;
    const peer = http2Session === undefined ? NO_PEER : session.peer(http2Session);
    const proto = h[':scheme'] === 'https' ? 'https' : 'http';
    if (headers['x-forwarded-for'] === undefined && headers.forwarded === undefined && proto === 'http') {
      headers['x-forwarded-for'] = peer.ip;
      if (headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = proto;
      headers.forwarded = peer.forwardedFor(this.authority);
    } else appendForwarded(headers, { ip: peer.ip, proto, host: this.authority });
    this.headers = headers;
    this.body = (flags & h2c.NGHTTP2_FLAG_END_STREAM) !== 0 ? undefined : stream;
    this.pick = {
      now: 0,
      clientIp: peer.ip,
      clientPort: peer.port,
      localIp: peer.localIp,
      localPort: peer.localPort,
      host: this.authority,
      path: this.path,
      headers: h,
    };
  }

  /** Sends the trailers when node:http2 asks for them; made only for responses that wait for some. */
  #sendTrailers(): void {
    this.#stream.sendTrailers(this.#trailers ?? {});
  }

  get gone(): boolean {
    return this.#stream.destroyed;
  }

  respond(status: number, headers: IncomingHttpHeaders, endStream: boolean): void {
    const stream = this.#stream;
    if (stream.headersSent || stream.destroyed) return;
    // Trailers are only waited for where they are expected (gRPC, a declared `Trailer`):
    // other responses end with their last DATA frame.
    this.#wantTrailers =
      !endStream && (this.grpc || isGrpc(headers['content-type']) || headers.trailer !== undefined);
    if (this.#wantTrailers) stream.once('wantTrailers', () => this.#sendTrailers());
    stream.respond(
      responseHeaderList(status, headers),
      endStream ? END_STREAM : this.#wantTrailers ? WAIT_TRAILERS : NO_TRAILERS,
    );
  }

  write(chunk: Buffer): boolean {
    const stream = this.#stream;
    if (stream.destroyed) return true;
    if (!this.#wantTrailers && this.#first === undefined && stream.writableLength === 0) {
      // Held until the next chunk or the end: a small response leaves in one call.
      this.#first = chunk;
      return true;
    }
    this.#flushFirst();
    return stream.write(chunk);
  }

  #flushFirst(): void {
    const first = this.#first;
    if (first === undefined) return;
    this.#first = undefined;
    this.#stream.write(first);
  }

  onDrain(fn: () => void): void {
    this.#stream.once('drain', fn);
  }

  end(trailers: IncomingHttpHeaders | undefined): void {
    const stream = this.#stream;
    if (stream.destroyed || stream.writableEnded) return;
    if (trailers !== undefined) this.#trailers = forwardableHeaders(trailers);
    const first = this.#first;
    this.#first = undefined;
    if (first !== undefined) stream.end(first);
    else stream.end();
  }

  fail(kind: ProxyFailure): void {
    const stream = this.#stream;
    if (stream.destroyed) return;
    this.#flushFirst();
    if (!stream.headersSent) {
      if (this.grpc) {
        stream.respond({ ':status': 200, ...grpcErrorHeaders(kind) }, { endStream: true });
      } else {
        const reply = errorReply(kind);
        stream.respond({ ':status': reply.status, ...reply.headers });
        stream.end(reply.body);
      }
    } else if (this.#wantTrailers && this.grpc && !stream.writableEnded) {
      // gRPC clients read the outcome from trailers: say what happened there.
      this.#trailers = grpcErrorHeaders(kind);
      delete this.#trailers['content-type'];
      stream.end();
    } else {
      stream.close(h2c.NGHTTP2_INTERNAL_ERROR);
    }
    // Stop reading a request body nobody will send anywhere.
    if (this.body !== undefined && !stream.readableEnded) stream.resume();
  }

  leave(): void {
    const session = this.#stream.session;
    if (session !== undefined) goAway(session);
  }

  abort(): void {
    if (!this.#stream.destroyed) this.#stream.close(h2c.NGHTTP2_CANCEL);
  }

  #onClose: ((complete: boolean) => void) | undefined;

  onClose(fn: (complete: boolean) => void): void {
    this.#onClose = fn;
  }

  /** The stream closed (onStreamClose). */
  closed(): void {
    this.#session.open--;
    const fn = this.#onClose;
    if (fn === undefined) return;
    this.#onClose = undefined;
    const stream = this.#stream;
    fn(stream.writableFinished && stream.rstCode === h2c.NGHTTP2_NO_ERROR);
  }
}

/**
 * Tell the client to open no more streams here (GOAWAY NO_ERROR naming the
 * last stream we will process), let the streams in flight finish, then close.
 * node's `close()` alone would only send GOAWAY once the last stream is done.
 */
function goAway(session: Http2Session): void {
  if (session.closed || session.destroyed) return;
  session.goaway(h2c.NGHTTP2_NO_ERROR);
  session.close();
}
