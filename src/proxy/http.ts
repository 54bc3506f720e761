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
  /** Take a socket, paused, that speaks HTTP/2; `first`: bytes already read from it (the client preface, or its start). */
  handleConnection(socket: Socket, first?: Buffer): void;
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
    if (options === undefined) {
      this.#tls = undefined;
      return;
    }
    if (this.#tls !== undefined) {
      this.#tls.setSecureContext(options);
      return;
    }
    const server = createTlsServer({
      ...options,
      ALPNProtocols: ['h2', 'http/1.1'],
      handshakeTimeout: 10_000,
    });
    server.on('tlsClientError', () => {});
    server.on('secureConnection', (tls: TLSSocket) => {
      tls.on('error', () => {});
      if (tls.alpnProtocol === 'h2') this.#http2.handleConnection(tls);
      else this.#http1.handleConnection(tls, this.#upgrade);
    });
    this.#tls = server;
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
      refuseOverLimit(socket, this.#tls !== undefined);
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
      counted[kFirstBytes]?.cancel();
      counted[kFirstBytes] = undefined;
      socket.removeListener('data', onFirst);
      socket.pause();
      if (h2) {
        this.#http2.handleConnection(socket, seen);
      } else {
        this.#http1.handleConnection(socket, this.#upgrade, seen);
      }
    };
    socket.on('data', onFirst);
    socket.resume();
  };
}

/**
 * How long a cleartext client may take to send enough to tell HTTP/2 from
 * HTTP/1.1 (as long as HTTP/1.1 gives a head). A connection that sends
 * nothing is closed then, rather than held (and counted against
 * `limits.maxConnections`) for ever.
 */
const FIRST_BYTES_TIMEOUT_MS = 30_000;

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
/** How long a refused connection may take to read its 503 and close. */
const LINGER_MS = 1_000;
/** Refused connections still reading their 503 at once; beyond, refusals close at once. */
const MAX_LINGERING = 64;
let lingering = 0;

/**
 * A client over `limits.maxConnections`. Cleartext: a 503 with `Connection:
 * close`, written at once, before the request is read (most clients are
 * HTTP/1.1; an HTTP/2 client cannot be told apart without waiting for its
 * bytes, and sees its connection fail as it would if closed). Then the
 * client's bytes are read and dropped until it closes: closing with its
 * request unread would send a reset, which can overtake the 503. That costs
 * the refused connection a second at most, and only a few at a time, so a
 * flood over the limit holds no more file descriptors than TCP's refusals.
 * TLS: closed at once, as TCP does (a handshake costs more than the answer
 * is worth).
 */
function refuseOverLimit(socket: Socket, tls: boolean): void {
  if (tls || lingering >= MAX_LINGERING) {
    socket.destroy();
    return;
  }
  lingering++;
  socket.on('error', ignore);
  socket.on('close', onRefusedClose);
  socket.setTimeout(LINGER_MS, onRefusedTimeout);
  socket.end(BUSY);
  socket.resume();
}
function onRefusedClose(): void {
  lingering--;
}
function onRefusedTimeout(this: Socket): void {
  this.destroy();
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
