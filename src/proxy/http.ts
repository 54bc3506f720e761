/**
 * `protocol: http` listeners: one port serves HTTP/1.1 (requests and
 * WebSocket upgrades) and HTTP/2. This file only tells them apart and hands
 * each connection to its data plane:
 *   - HTTP/2 prior knowledge (the client preface)   → http2.ts
 *   - HTTP/1.1 with `Upgrade: websocket`             → websocket.ts
 *   - other HTTP/1.1 requests                        → http1.ts
 */
import { readFileSync } from 'node:fs';
import {
  createServer as createTlsServer,
  type SecureContextOptions,
  type Server as TlsServer,
  type TLSSocket,
} from 'node:tls';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Clock, Timer } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { ConfigError } from '../errors.ts';
import { frame, GOAWAY, NO_ERROR, SETTINGS } from './h2/frames.ts';
import type { ProtocolHandler, ServiceStats } from './handler.ts';

/** Shared by the HTTP-family data planes of one service. */
export interface HttpContext {
  readonly cluster: Cluster;
  readonly clock: Clock;
  readonly log: Logger;
  readonly stats: ServiceStats;
  /** The current service config (replaced on reload). */
  config: ServiceConfig;
  /**
   * An accepted connection closed. Called by the accept path when its socket
   * closes, and by a part that took the socket's handle over (WebSocket legs:
   * the emptied net.Socket closes at once, the connection only later).
   */
  connectionClosed(): void;
  /**
   * The service holds more client connections than `limits.maxConnections`
   * (a reload lowered it): a WebSocket upgrade is then refused with 503, as
   * new connections are. Within the limit an upgrade is never refused for
   * it: its connection was counted when it was accepted.
   */
  overLimit(): boolean;
}

/** One HTTP-family data plane (WebSocket, HTTP/1.1, HTTP/2). */
export interface HttpPart {
  configure?(config: ServiceConfig): void;
  /** Shutdown: ask idle and busy client connections to go (GOAWAY, `Connection: close`). */
  drain?(): void;
}

/** An HTTP/1.1 request asking to upgrade, as parsed by http1.ts (the shape node:http's IncomingMessage also has). */
export interface UpgradeRequest {
  readonly method: string;
  readonly url: string;
  /** Lowercase names; repeated fields joined. */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** Field names as sent and their values, alternating, in order. */
  readonly rawHeaders: readonly string[];
}

/** Takes a socket whose request head asked to upgrade; `head` is what the client sent after it. */
export type Upgrade = (req: UpgradeRequest, socket: Socket, head: Buffer) => void;

export interface UpgradeHandler extends HttpPart {
  handleUpgrade: Upgrade;
}

export interface RequestHandler extends HttpPart {
  /**
   * Take an HTTP/1.1 connection, paused; `first`: bytes already read from it.
   * A request asking to upgrade is handed, parsed, to `upgrade` together with
   * the socket: from then on the connection is the UpgradeHandler's.
   */
  handleConnection(socket: Socket, upgrade: Upgrade, first?: Buffer): void;
}

export interface Http2Handler extends HttpPart {
  /**
   * Take a socket, paused, that speaks HTTP/2; `first`: bytes already read
   * from it (the client preface, or its start). `deadline` closes the
   * connection when it fires; the handler takes it over and cancels it once
   * the client's preface and first SETTINGS frame have arrived.
   */
  handleConnection(socket: Socket, first?: Buffer, deadline?: Timer): void;
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n');

export interface HttpParts {
  websocket: UpgradeHandler;
  http1: RequestHandler;
  http2: Http2Handler;
}

/** The parts come from the modules that implement them (see gateway.ts). */
export class HttpProxy implements ProtocolHandler {
  readonly ctx: HttpContext;
  readonly stats: ServiceStats = { accepted: 0, closed: 0, refused: {}, errors: {} };
  live = 0;
  readonly #websocket: UpgradeHandler;
  readonly #http1: RequestHandler;
  readonly #http2: Http2Handler;
  /**
   * Set when the service terminates TLS (`tls: { cert, key }`): a tls.Server that never
   * listens, fed the accepted sockets; ALPN picks h2 or http/1.1. (A hand-made server-side
   * TLSSocket never leaves `secureConnecting`, so node:http2 would wait on it for ever.)
   */
  #tls: TlsServer | undefined;
  /**
   * A second such server for TLS clients over `limits.maxConnections`, made
   * at the first one: after its handshake, a refused client is told in its
   * own protocol (see refuseOverLimit).
   */
  #tlsRefusals: TlsServer | undefined;
  #tlsOptions: SecureContextOptions | undefined;

  constructor(
    cluster: Cluster,
    config: ServiceConfig,
    clock: Clock,
    log: Logger,
    parts: (ctx: HttpContext) => HttpParts,
  ) {
    this.ctx = {
      cluster,
      clock,
      log,
      stats: this.stats,
      config,
      connectionClosed: () => {
        this.live--;
        this.stats.closed++;
      },
      overLimit: () => {
        const max = this.ctx.config.limits.maxConnections;
        return max !== undefined && this.live > max;
      },
    };
    const built = parts(this.ctx);
    this.#websocket = built.websocket;
    this.#http1 = built.http1;
    this.#http2 = built.http2;
    this.#configureTls(config);
  }

  configure(config: ServiceConfig): void {
    this.ctx.config = config;
    this.#websocket.configure?.(config);
    this.#http1.configure?.(config);
    this.#http2.configure?.(config);
    this.#configureTls(config);
  }

  #configureTls(config: ServiceConfig): void {
    const options = tlsOptionsOf(config);
    this.#tlsOptions = options;
    if (options === undefined) {
      this.#tls = undefined;
      this.#tlsRefusals = undefined;
      return;
    }
    if (this.#tls !== undefined) {
      this.#tls.setSecureContext(options);
      this.#tlsRefusals?.setSecureContext(options);
      return;
    }
    const server = tlsServer(options, HANDSHAKE_TIMEOUT_MS);
    server.on('secureConnection', (tls: TLSSocket) => {
      tls.on('error', ignore);
      if (tls.alpnProtocol === 'h2') {
        // The handshake had its own bound; the preface and first SETTINGS get
        // as long as a cleartext client has to say what it speaks.
        const deadline = this.ctx.clock.setTimer(() => tls.destroy(), FIRST_BYTES_TIMEOUT_MS);
        this.#http2.handleConnection(tls, undefined, deadline);
      } else {
        // Likewise the first bytes of an HTTP/1.1 client (until then the idle
        // sweep would give it `clientIdle`, minutes).
        const deadline = this.ctx.clock.setTimer(() => tls.destroy(), FIRST_BYTES_TIMEOUT_MS);
        const settled = (): void => deadline.cancel();
        tls.once('data', settled);
        tls.once('close', settled);
        this.#http1.handleConnection(tls, this.#upgrade);
      }
    });
    this.#tls = server;
  }

  /** The TLS server refused clients are handed to (made when first needed). */
  #refusalTls(): TlsServer | undefined {
    if (this.#tlsOptions === undefined) return undefined;
    if (this.#tlsRefusals === undefined) {
      const server = tlsServer(this.#tlsOptions, LINGER_MS);
      server.on('secureConnection', (tls: TLSSocket) => {
        tls.on('error', ignore);
        answerRefused(tls, tls.alpnProtocol === 'h2');
      });
      this.#tlsRefusals = server;
    }
    return this.#tlsRefusals;
  }

  /** Shutdown: every part asks its clients to go; idle HTTP/1.1 connections close now. */
  drain(): void {
    this.#websocket.drain?.();
    this.#http1.drain?.();
    this.#http2.drain?.();
  }

  readonly #upgrade: Upgrade = (req, socket, head) => this.#websocket.handleUpgrade(req, socket, head);

  readonly accept = (socket: Socket): void => {
    // One check per client connection, whatever it turns out to speak: an
    // HTTP/1.1 connection that later upgrades to a WebSocket stays this one
    // connection, counted once.
    const max = this.ctx.config.limits.maxConnections;
    if (max !== undefined && this.live >= max) {
      const refused = this.stats.refused;
      refused.limit = (refused.limit ?? 0) + 1;
      refuseOverLimit(socket, this.#refusalTls(), this.ctx.clock);
      return;
    }
    this.stats.accepted++;
    this.live++;
    // TCP keepalive (tcpKeepAlive) is on the TCP socket itself, also under TLS,
    // kept if it upgrades to a WebSocket: set by the Listener (inherited from
    // the listening socket).
    // Module-level listeners: an upgraded WebSocket keeps its socket for
    // hours, and a closure here would stay with it.
    (socket as CountedSocket)[kProxy] = this;
    // `on`, not `once`: 'close' comes once anyway, and a once-wrapper is three more objects per socket.
    socket.on('close', onAcceptedClose);
    socket.on('error', ignore);
    if (this.#tls !== undefined) {
      this.#tls.emit('connection', socket);
      return;
    }
    // Look at the first bytes to tell HTTP/2 prior knowledge from HTTP/1.1; a
    // client may send them a few at a time, so wait while they match the preface.
    // Not for ever: until then neither protocol's timeouts watch the connection.
    const counted = socket as CountedSocket;
    counted[kFirstBytes] = this.ctx.clock.setTimer(() => {
      counted[kFirstBytes] = undefined;
      socket.destroy();
    }, FIRST_BYTES_TIMEOUT_MS);
    let seen: Buffer | undefined;
    const onFirst = (data: Buffer): void => {
      seen = seen === undefined ? data : Buffer.concat([seen, data]);
      const n = Math.min(seen.length, PREFACE.length);
      const h2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (h2 && n < PREFACE.length) return;
      const deadline = counted[kFirstBytes];
      counted[kFirstBytes] = undefined;
      socket.removeListener('data', onFirst);
      socket.pause();
      if (h2) {
        // The rest of the preface and the first SETTINGS frame are still to
        // come: the same bound goes on until they have.
        this.#http2.handleConnection(socket, seen, deadline);
      } else {
        deadline?.cancel();
        this.#http1.handleConnection(socket, this.#upgrade, seen);
      }
    };
    socket.on('data', onFirst);
    socket.resume();
  };
}

/**
 * How long a cleartext client may take to send enough to tell HTTP/2 from
 * HTTP/1.1 (as long as HTTP/1.1 gives a head), and an HTTP/2 client, cleartext
 * or TLS, to send the whole preface and its first SETTINGS frame. A connection
 * that stalls before then is closed, rather than held (and counted against
 * `limits.maxConnections`) for ever: until then neither protocol's timeouts
 * watch it. For cleartext it runs from the accept, for TLS from the end of
 * the handshake.
 */
const FIRST_BYTES_TIMEOUT_MS = 30_000;
/**
 * How long a TLS handshake may take from the accept. Shorter than the
 * first-bytes bound: a client that means to talk finishes it in a few round
 * trips, and a handshake in progress holds more (OpenSSL's state) than a
 * silent cleartext socket. Node's timer starts with the socket and is not
 * moved by the client's bytes (they are read natively), so a client cannot
 * stretch it by trickling.
 */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * A tls.Server that never listens (see HttpProxy's `#tls`). Node only reports
 * a handshake that failed or took longer than `handshakeTimeout` (the
 * timeout, notably, leaves the socket open): such a client is closed here.
 */
function tlsServer(options: SecureContextOptions, handshakeTimeout: number): TlsServer {
  const server = createTlsServer({ ...options, ALPNProtocols: ['h2', 'http/1.1'], handshakeTimeout });
  server.on('tlsClientError', onTlsClientError);
  return server;
}
function onTlsClientError(_err: Error, tls: TLSSocket): void {
  tls.destroy();
}

const kProxy = Symbol('holdfast.http.proxy');
const kFirstBytes = Symbol('holdfast.http.firstBytes');
interface CountedSocket extends Socket {
  [kProxy]: HttpProxy;
  /** Until the protocol is known (cleartext): the first-bytes timeout. */
  [kFirstBytes]?: Timer | undefined;
}
function onAcceptedClose(this: CountedSocket): void {
  // Closed before it said anything: its timer need not wait its 30 s.
  this[kFirstBytes]?.cancel();
  this[kProxy].ctx.connectionClosed();
}
function ignore(): void {}

const BUSY_BODY = 'the service is at its connection limit; retry later\n';
const BUSY = Buffer.from(
  'HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\n' +
    `x-holdfast-error: connection-limit\r\ncontent-length: ${BUSY_BODY.length}\r\n\r\n${BUSY_BODY}`,
);
/**
 * The same refusal in HTTP/2: our SETTINGS (the server's preface; none
 * changed), then GOAWAY with last stream id 0 (no stream was or will be
 * processed, so every request may be retried elsewhere) and the reason as
 * debug data. NO_ERROR, as a graceful shutdown, and as Envoy's overload
 * GOAWAY: node:http2 then fails pending requests with REFUSED_STREAM and
 * closes the session without an error, and grpc-js fails calls UNAVAILABLE
 * (retryable). Other codes read worse: any code but NO_ERROR makes
 * node:http2 destroy the session with an error; ENHANCE_YOUR_CALM becomes
 * RESOURCE_EXHAUSTED in grpc-js (and, with "too_many_pings", doubles its
 * keepalive interval), INTERNAL_ERROR becomes INTERNAL.
 */
const REFUSED_H2 = ((): Buffer => {
  const debug = Buffer.from(`connection-limit: ${BUSY_BODY.trim()}`);
  const goaway = Buffer.alloc(8 + debug.length);
  goaway.writeUInt32BE(0, 0);
  goaway.writeUInt32BE(NO_ERROR, 4);
  debug.copy(goaway, 8);
  return Buffer.concat([frame(SETTINGS, 0, 0), frame(GOAWAY, 0, 0, goaway)]);
})();
/** How long a refused connection may take to read its answer and close, from the accept. */
const LINGER_MS = 1_000;
/** Refused connections still being answered at once; beyond, refusals close at once. */
const MAX_LINGERING = 64;
let lingering = 0;

/**
 * A client over `limits.maxConnections` is answered in its own protocol:
 * HTTP/1.1 gets a 503 with `Connection: close`, HTTP/2 (the preface, or ALPN
 * h2) SETTINGS and GOAWAY (REFUSED_H2); no request or stream is ever
 * proxied. Cleartext: the first bytes tell which (the answer goes out as soon
 * as they do, before the request is read). TLS: the handshake is completed
 * (on a server of its own, within the same bound) for ALPN to tell. Then the
 * client's bytes are read and dropped until it closes: closing with its
 * request unread would send a reset, which can overtake the answer. A refused
 * connection lasts a second from its accept at most, whatever the client
 * does, and only 64 at a time are answered (beyond, they are closed at
 * once), so a flood over the limit holds no more file descriptors than TCP's
 * refusals.
 */
function refuseOverLimit(socket: Socket, tls: TlsServer | undefined, clock: Clock): void {
  if (lingering >= MAX_LINGERING) {
    socket.destroy();
    return;
  }
  lingering++;
  // Not the socket's idle timeout: a client trickling bytes would move it.
  const deadline = clock.setTimer(() => socket.destroy(), LINGER_MS);
  socket.on('error', ignore);
  socket.on('close', () => {
    lingering--;
    deadline.cancel();
  });
  if (tls !== undefined) {
    tls.emit('connection', socket);
    return;
  }
  let seen: Buffer | undefined;
  const onData = (data: Buffer): void => {
    seen = seen === undefined ? data : Buffer.concat([seen, data]);
    const n = Math.min(seen.length, PREFACE.length);
    const h2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
    if (h2 && n < PREFACE.length) return;
    socket.removeListener('data', onData);
    answerRefused(socket, h2);
  };
  socket.on('data', onData);
  socket.resume();
}

/** Answer a refused client and read what it still sends into nothing until it closes. */
function answerRefused(socket: Socket, h2: boolean): void {
  socket.end(h2 ? REFUSED_H2 : BUSY);
  socket.resume();
}

/** Load `tls: { cert, key }` (PEM files); undefined when the service is cleartext. */
function tlsOptionsOf(config: ServiceConfig): SecureContextOptions | undefined {
  if (config.tls === undefined) return undefined;
  try {
    return { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) };
  } catch (cause) {
    throw new ConfigError(
      `cannot load the TLS certificate or key (${(cause as Error).message})`,
      {
        field: `services.${config.name}.tls`,
      },
      { cause },
    );
  }
}
