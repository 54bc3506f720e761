/**
 * HTTP/2 downstream (cleartext prior knowledge, or TLS with ALPN `h2`): each
 * stream is balanced on its own (http-forward.ts). The protocol is holdfast's
 * own (h2/connection.ts: framing, HPACK, flow control, flood guards); this
 * file joins it to the data plane. Sessions are pinged, closed with GOAWAY at
 * `maxConnectionAge`, on drain, reload of their settings and shutdown, and
 * after `clientIdle` without streams.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import type { PickContext } from '../balance/types.ts';
import type { Timer } from '../cluster/clock.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { DeadlineWheel, type WheelEntry } from '../deadline-wheel.ts';
import type { Http2Handler } from './http.ts';
import { errorReply, grpcErrorHeaders, type ProxyFailure } from './http-errors.ts';
import type { CloseWatcher, Downstream, HttpPlane } from './http-forward.ts';
import {
  appendForwarded,
  connectionNamed,
  forwardableHeaders,
  type HeaderMap,
  HOP_BY_HOP,
  isGrpc,
  maxAge,
} from './http-headers.ts';
import { jittered, SESSION_WINDOW, sweepEvery } from './http-keepalive.ts';
import type { RawResponseHead } from './http-upstream.ts';
import {
  type H2Limits,
  H2Connection,
  type HeadProblem,
  onConnectionRead,
  type RequestHead,
} from './h2/connection.ts';
import { CANCEL, INTERNAL_ERROR } from './h2/frames.ts';
import { sharedEncoder as encoder } from './h2/hpack.ts';
import { H2Stream } from './h2/stream.ts';
import { socketAddresses, tlsServerName } from './socket-address.ts';
import { readThrough } from './socket-reads.ts';

/** Per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE). */
const STREAM_WINDOW = 1 << 20;

/** A client session's addresses and its `Forwarded` element, computed once per session. */
class Peer {
  readonly ip: string;
  readonly port: number | undefined;
  readonly localIp: string | undefined;
  readonly localPort: number | undefined;
  /** The TLS server name the client asked for, where holdfast terminates TLS. */
  readonly sni: string | undefined;
  #host: string | undefined;
  #fwd = '';
  constructor(ip: string, port?: number, localIp?: string, localPort?: number, sni?: string) {
    this.ip = ip;
    this.port = port;
    this.localIp = localIp;
    this.localPort = localPort;
    this.sni = sni;
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

function limitsOf(config: ServiceConfig): H2Limits {
  return {
    maxConcurrentStreams: config.http2.maxConcurrentStreams,
    maxHeaderListSize: config.headerLimits.maxSize,
    maxHeaderCount: config.headerLimits.maxCount,
    streamWindow: STREAM_WINDOW,
    connectionWindow: SESSION_WINDOW,
  };
}

/** One client connection, with what the data plane keeps for it. */
class Session extends H2Connection implements WheelEntry<Session> {
  readonly plane: HttpPlane;
  readonly handler: Http2DownstreamHandler;
  readonly peer: Peer;
  /** Streams forwarded so far (for the idle sweep). */
  started = 0;
  /** The idle sweep's view: `started` at its last pass, and since when nothing started or was open. */
  idleMark = -1;
  idleSince = 0;
  /** `maxConnectionAge`: when the handler's sweep sends GOAWAY (0: never). */
  goAwayAt = 0;
  /**
   * The keepalive (see Http2DownstreamHandler): when the next PING is due
   * (whole ms of the clock), and whether one is out without its ACK yet.
   */
  pingAt = 0;
  pingOut = false;
  // Its place among the handler's sessions (a DeadlineWheel), filed under its next keepalive check.
  wheelAt = -1;
  wheelSlot = -1;
  wheelPrev: Session | undefined = undefined;
  wheelNext: Session | undefined = undefined;

  constructor(socket: Socket, limits: H2Limits, plane: HttpPlane, handler: Http2DownstreamHandler) {
    super(socket, limits, plane.ctx.clock);
    this.plane = plane;
    this.handler = handler;
    const a = socketAddresses(socket);
    this.peer = new Peer(a.ip ?? 'unknown', a.port, a.localIp, a.localPort, tlsServerName(socket));
  }

  protected request(id: number, head: RequestHead, endStream: boolean): void {
    if (head.method === 'CONNECT') {
      simpleResponse(
        new H2Stream(this, id, endStream),
        405,
        { 'x-holdfast-error': 'connect-not-supported' },
        undefined,
      );
      return;
    }
    this.started++;
    this.plane.forward(new Http2Downstream(this, id, head, endStream));
  }

  protected count(kind: string): void {
    this.plane.count(kind);
    if (kind.startsWith('h2-')) {
      this.plane.ctx.log.debug({ service: this.plane.ctx.cluster.name, kind }, 'HTTP/2 client session error');
    }
  }

  protected internalError(err: unknown): void {
    this.plane.ctx.log.error(
      { service: this.plane.ctx.cluster.name, err: (err as Error).message, stack: (err as Error).stack },
      'HTTP/2 client session failed; closed it',
    );
  }

  protected refuseHead(id: number, problem: HeadProblem, endStream: boolean): void {
    const body = `431 request header fields too large (holdfast: ${problem})\n`;
    simpleResponse(
      new H2Stream(this, id, endStream),
      431,
      {
        'content-type': 'text/plain; charset=utf-8',
        'content-length': String(body.length),
        'x-holdfast-error': problem,
      },
      body,
    );
  }

  protected closedHook(): void {
    this.handler.forget(this);
  }

  protected override keepaliveAcked(): void {
    if (this.pingOut) this.handler.acked(this);
  }
}

/** A response the proxy makes up itself (405, 431). */
function simpleResponse(
  stream: H2Stream,
  status: number,
  headers: HeaderMap,
  body: string | undefined,
): void {
  encoder.begin();
  encoder.status(status);
  for (const name in headers) encoder.field(name, headers[name] as string);
  stream.sendHeaders(encoder.block(), body === undefined);
  if (body !== undefined) {
    stream.writeData(Buffer.from(body));
    stream.finish(undefined);
  }
}

/** The width of the keepalive wheel's slots for these PING settings (ms): how late a check may come. */
function keepaliveTickMs(config: ServiceConfig): number {
  const { interval, timeout } = config.http2.ping;
  let ms = 1000;
  if (interval > 0) ms = Math.min(ms, interval / 10);
  if (timeout > 0) ms = Math.min(ms, timeout / 10);
  // Whole milliseconds, so that slot boundaries fall on the integer times the checks use.
  return Math.max(20, Math.floor(ms));
}

/**
 * Client sessions and their PING keepalive (gRPC's keepalive, Envoy's
 * connection_keepalive): a PING every `http2.ping.interval` (± jitter) after
 * the last ACK; a session whose ACK is not back within the timeout is
 * closed, so a client that vanished without a FIN is found in seconds.
 *
 * The sessions are a timing wheel (deadline-wheel.ts), each filed under its
 * next keepalive check (the PING due, or its ACK's deadline), and one tick
 * per service visits only the sessions that are due: no timer, closure or
 * callback per session or per PING (that was a Node Timeout and four
 * closures a session, and two timers and three closures a PING). Thousands
 * of idle gRPC channels then cost one visit each per interval.
 */
export class Http2DownstreamHandler implements Http2Handler {
  readonly #plane: HttpPlane;
  /** Every open session, filed under its next keepalive check (none: PINGs off, or closing). */
  readonly #sessions: DeadlineWheel<Session>;
  #sweep: Timer | undefined;
  #tick: Timer | undefined;
  #config: ServiceConfig;
  #limits: H2Limits;
  #draining = false;
  /** The tick's time, for #fire (a method, not a closure per tick). */
  #now = 0;

  constructor(plane: HttpPlane) {
    this.#plane = plane;
    this.#config = plane.ctx.config;
    this.#limits = limitsOf(this.#config);
    this.#sessions = new DeadlineWheel(keepaliveTickMs(this.#config), Math.floor(plane.ctx.clock.now()));
  }

  configure(config: ServiceConfig): void {
    const changed =
      JSON.stringify([config.http2, config.headerLimits]) !==
      JSON.stringify([this.#config.http2, this.#config.headerLimits]);
    this.#config = config;
    if (changed) {
      // New settings apply to new sessions; existing ones are asked to reconnect
      // (their next keepalive check keeps its time, later ones follow the new settings).
      this.#limits = limitsOf(config);
      this.#sessions.resize(keepaliveTickMs(config), Math.floor(this.#plane.ctx.clock.now()));
      this.#tick?.cancel();
      this.#tick = undefined;
      this.#scheduleTick();
      for (const s of this.#sessions) s.goAway();
    }
  }

  /** GOAWAY to every client session; streams in flight finish. */
  drain(): void {
    this.#draining = true;
    for (const s of this.#sessions) s.goAway();
  }

  forget(session: Session): void {
    this.#sessions.delete(session);
  }

  /** `session`'s keepalive PING was answered: the next one is due an interval from now. */
  acked(session: Session): void {
    session.pingOut = false;
    const ping = this.#config.http2.ping;
    session.pingAt = Math.floor(this.#plane.ctx.clock.now()) + jittered(ping.interval, ping.jitter);
    // Not while the session is out of the wheel (being closed).
    if (session.wheelSlot < 0) return;
    this.#sessions.set(session, session.pingAt);
    this.#scheduleTick();
  }

  handleConnection(socket: Socket, first?: Buffer, deadline?: Timer): void {
    const plane = this.#plane;
    const config = this.#config;
    // Cleartext sockets read into the shared read buffer (socket-reads.ts); TLS through 'data'.
    readThrough(socket, onConnectionRead);
    const session = new Session(socket, this.#limits, plane, this);
    const ping = config.http2.ping;
    if (ping.interval > 0) {
      session.pingAt = Math.floor(plane.ctx.clock.now()) + jittered(ping.interval, ping.jitter);
      this.#sessions.set(session, session.pingAt);
      this.#scheduleTick();
    } else this.#sessions.set(session, Infinity);
    const age = maxAge(config);
    if (age > 0) session.goAwayAt = plane.ctx.clock.now() + jittered(age, 0.1);
    if (this.#draining) session.goAway();
    this.#scheduleSweep();
    session.start(first, deadline);
    if (!session.destroyed) socket.resume();
  }

  /** Run the keepalive tick at the next slot of the wheel, while any session has a check to come. */
  #scheduleTick(): void {
    if (this.#tick !== undefined || this.#sessions.timed === 0) return;
    const clock = this.#plane.ctx.clock;
    // A millisecond over: Node times a timer from the loop's cached time, which
    // lags the clock, and a tick that came before its slot would only arm another.
    this.#tick = clock.setTimer(
      this.#onTick,
      Math.max(1, Math.ceil(this.#sessions.nextTickAt() - clock.now()) + 1),
    );
  }

  readonly #onTick = (): void => {
    this.#tick = undefined;
    this.#now = Math.floor(this.#plane.ctx.clock.now());
    this.#sessions.advance(this.#now, this.#fire);
    this.#scheduleTick();
  };

  /** A session's keepalive check is due (it is out of the wheel: file it again, or close it). */
  readonly #fire = (session: Session): void => {
    if (session.pingOut) {
      // The ACK did not come in time (`acked` would have filed it under its next PING).
      this.#plane.count('client-ping-timeout');
      session.destroy();
      return;
    }
    const sessions = this.#sessions;
    const ping = this.#config.http2.ping;
    // Closing (no more PINGs: it stays in the set until it is closed), or PINGs turned off.
    if (session.closed || ping.interval <= 0 || !session.keepalivePing()) {
      sessions.set(session, Infinity);
      return;
    }
    session.pingOut = true;
    // With no timeout the ACK is awaited for ever; `acked` files the session again.
    sessions.set(session, ping.timeout > 0 ? this.#now + ping.timeout : Infinity);
  };

  /**
   * One sweep over the sessions rather than timers per session:
   * - idle sessions (no stream open, none started) get GOAWAY after
   *   `clientIdle` (between 1 and 1.25 times it). PINGs do not count as
   *   activity, so a client that only answers our keepalive is still idle;
   * - sessions past `maxConnectionAge` get GOAWAY, within 1/20 of the age or
   *   a minute, whichever is less, of when they were due.
   */
  #scheduleSweep(): void {
    if (this.#sweep !== undefined || this.#sessions.size === 0) return;
    const every = sweepEvery(this.#config.httpTimeouts.clientIdle, maxAge(this.#config));
    if (every === 0) return;
    const clock = this.#plane.ctx.clock;
    this.#sweep = clock.setTimer(() => {
      this.#sweep = undefined;
      const now = clock.now();
      const limit = this.#config.httpTimeouts.clientIdle;
      for (const st of this.#sessions) {
        if (st.goAwayAt !== 0 && now >= st.goAwayAt) {
          st.goAwayAt = 0;
          st.goAway();
        }
        if (st.openStreams > 0 || st.started !== st.idleMark) {
          st.idleMark = st.started;
          st.idleSince = now;
        } else if (limit > 0 && now - st.idleSince >= limit) st.goAway();
      }
      this.#scheduleSweep();
    }, every);
  }
}

/** The fields of a backend's response head the proxy forwards, HPACK-encoded after `:status`. */
function encodeHeaders(status: number, headers: IncomingHttpHeaders): Buffer {
  encoder.begin();
  encoder.status(status);
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
    if (typeof value === 'string') encoder.field(name, value);
    else for (const one of value) encoder.field(name, one);
  }
  return encoder.block();
}

/** Where a backend's field lines are copied to be encoded (one head at a time, synchronously). */
let rawLines = Buffer.allocUnsafeSlow(4096);

/**
 * An HTTP/1.1 backend's field lines (`Name: value\r\n`…, hop-by-hop and
 * framing fields already dropped) HPACK-encoded after `:status`, names made
 * lowercase, byte for byte: no header map.
 */
function encodeRawHead(head: RawResponseHead): Buffer {
  const end = head.linesLength;
  if (rawLines.length < end) rawLines = Buffer.allocUnsafeSlow(Math.max(end, rawLines.length * 2));
  const lines = rawLines;
  head.copyLines(lines, 0);
  encoder.begin();
  encoder.status(head.status);
  let i = 0;
  while (i < end) {
    let eol = lines.indexOf(10, i);
    if (eol < 0) eol = end;
    let colon = i;
    while (colon < eol && lines[colon] !== 58) colon++;
    if (colon > i && colon < eol) {
      let v0 = colon + 1;
      let v1 = eol;
      if (v1 > v0 && lines[v1 - 1] === 13) v1--;
      while (v0 < v1 && (lines[v0] === 32 || lines[v0] === 9)) v0++;
      while (v1 > v0 && (lines[v1 - 1] === 32 || lines[v1 - 1] === 9)) v1--;
      encoder.fieldBytes(lines, i, colon, v0, v1);
    }
    i = eol + 1;
  }
  return encoder.block();
}

/**
 * A stream's pick context. The balancer sees the request as the client sent
 * it: `headers` is the forwarded map with the forwarding fields this hop added
 * or appended to put back as they came, made only when a policy reads it
 * (maglev's header and cookie keys), not for every request.
 */
class StreamPick implements PickContext {
  now = 0;
  readonly #down: Http2Downstream;
  readonly #peer: Peer;
  /** The client's X-Forwarded-For, X-Forwarded-Proto and Forwarded (undefined: not sent). */
  readonly #xff: string | string[] | undefined;
  readonly #xfp: string | string[] | undefined;
  readonly #fwd: string | string[] | undefined;
  #headers: HeaderMap | undefined;

  constructor(
    down: Http2Downstream,
    peer: Peer,
    xff: string | string[] | undefined,
    xfp: string | string[] | undefined,
    fwd: string | string[] | undefined,
  ) {
    this.#down = down;
    this.#peer = peer;
    this.#xff = xff;
    this.#xfp = xfp;
    this.#fwd = fwd;
  }

  get clientIp(): string {
    return this.#peer.ip;
  }
  get clientPort(): number | undefined {
    return this.#peer.port;
  }
  get localIp(): string | undefined {
    return this.#peer.localIp;
  }
  get localPort(): number | undefined {
    return this.#peer.localPort;
  }
  get sni(): string | undefined {
    return this.#peer.sni;
  }
  get host(): string | undefined {
    return this.#down.authority;
  }
  get path(): string {
    return this.#down.path;
  }

  /** The request's fields as the client sent them (lower-case names). */
  get headers(): HeaderMap {
    if (this.#headers !== undefined) return this.#headers;
    const forwarded = this.#down.headers;
    const out: HeaderMap = {};
    for (const name in forwarded) {
      if (name === 'x-forwarded-for' || name === 'x-forwarded-proto' || name === 'forwarded') continue;
      out[name] = forwarded[name]!;
    }
    if (this.#xff !== undefined) out['x-forwarded-for'] = this.#xff;
    if (this.#xfp !== undefined) out['x-forwarded-proto'] = this.#xfp;
    if (this.#fwd !== undefined) out.forwarded = this.#fwd;
    return (this.#headers = out);
  }
}

class Http2Downstream extends H2Stream implements Downstream {
  readonly method: string;
  readonly path: string;
  readonly authority: string | undefined;
  readonly headers: HeaderMap;
  readonly grpc: boolean;
  readonly pick: StreamPick;
  readonly #session: Session;
  #onClose: CloseWatcher | undefined;

  constructor(session: Session, id: number, head: RequestHead, endStream: boolean) {
    super(session, id, endStream);
    this.#session = session;
    this.method = head.method;
    this.path = head.path;
    this.authority = head.authority;
    this.contentLength = head.contentLength;
    const headers = head.headers;
    this.grpc = isGrpc(headers['content-type']);
    const peer = session.peer;
    const proto = head.scheme === 'https' ? 'https' : 'http';
    const xff = headers['x-forwarded-for'];
    const xfp = headers['x-forwarded-proto'];
    const fwd = headers.forwarded;
    if (xff === undefined && fwd === undefined && proto === 'http') {
      headers['x-forwarded-for'] = peer.ip;
      if (xfp === undefined) headers['x-forwarded-proto'] = proto;
      headers.forwarded = peer.forwardedFor(this.authority);
    } else {
      appendForwarded(headers, { ip: peer.ip, proto, host: this.authority });
    }
    this.headers = headers;
    this.pick = new StreamPick(this, peer, xff, xfp, fwd);
  }

  get gone(): boolean {
    return this.closed;
  }

  respond(status: number, headers: IncomingHttpHeaders, endStream: boolean): void {
    if (this.headersSent || this.closed) return;
    this.sendHeaders(encodeHeaders(status, headers), endStream);
  }

  respondRaw(head: RawResponseHead, endStream: boolean): void {
    if (this.headersSent || this.closed) return;
    this.sendHeaders(encodeRawHead(head), endStream);
  }

  /** Chunks may be views of a backend's read buffer: the stream copies what it keeps (small frames are copied anyway). */
  get takesViews(): boolean {
    return true;
  }

  write(chunk: Buffer, transient = false): boolean {
    return this.writeData(chunk, transient);
  }

  onDrain(fn: () => void): void {
    this.onDrained(fn);
  }

  end(trailers: IncomingHttpHeaders | undefined): void {
    if (this.closed || this.ending) return;
    this.finish(trailers === undefined ? undefined : forwardableHeaders(trailers));
  }

  fail(kind: ProxyFailure): void {
    if (this.closed) return;
    if (!this.headersSent) {
      if (this.grpc) {
        simpleResponse(this, 200, grpcErrorHeaders(kind), undefined);
      } else {
        const reply = errorReply(kind);
        simpleResponse(this, reply.status, reply.headers, reply.body);
      }
    } else if (this.grpc && !this.ending) {
      // gRPC clients read the outcome from trailers: say what happened there.
      const trailers = grpcErrorHeaders(kind);
      delete trailers['content-type'];
      this.finish(trailers);
    } else {
      this.reset(INTERNAL_ERROR);
    }
    // Stop reading a request body nobody will send anywhere.
    if (!this.closed && !this.remoteClosed) this.discardBody();
  }

  leave(): void {
    this.#session.goAway();
  }

  abort(): void {
    this.reset(CANCEL);
  }

  onClose(watcher: CloseWatcher): void {
    this.#onClose = watcher;
  }

  protected override closedHook(complete: boolean): void {
    const watcher = this.#onClose;
    if (watcher === undefined) return;
    this.#onClose = undefined;
    watcher.downstreamClosed(complete);
  }
}
