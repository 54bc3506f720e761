/**
 * `protocol: http` listeners: one port serves HTTP/1.1 (requests and
 * WebSocket upgrades) and HTTP/2. This file only tells them apart and hands
 * each connection to its data plane:
 *   - HTTP/2 prior knowledge (the client preface)   → http2.ts
 *   - HTTP/1.1 with `Upgrade: websocket`             → websocket.ts
 *   - other HTTP/1.1 requests                        → http1.ts
 */
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  createServer as createTlsServer,
  type SecureContextOptions,
  type Server as TlsServer,
  type TLSSocket,
} from 'node:tls';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../cluster/clock.ts';
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
}

/** One HTTP-family data plane (WebSocket, HTTP/1.1, HTTP/2). */
export interface HttpPart {
  configure?(config: ServiceConfig): void;
  /** Shutdown: ask idle and busy client connections to go (GOAWAY, `Connection: close`). */
  drain?(): void;
}

export interface UpgradeHandler extends HttpPart {
  handleUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void;
}

export interface RequestHandler extends HttpPart {
  /**
   * Take an HTTP/1.1 connection (its first bytes already unshifted back). A
   * request asking to upgrade is given, with its bytes unshifted, to
   * `toUpgrade`, which runs it through node:http to the UpgradeHandler.
   */
  handleConnection(socket: Socket, toUpgrade: (socket: Socket) => void): void;
}

export interface Http2Handler extends HttpPart {
  /** Take a socket whose first bytes are the HTTP/2 client preface (already unshifted back). */
  handleConnection(socket: Socket): void;
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
  readonly #server: Server;
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
    this.ctx = { cluster, clock, log, stats: this.stats, config };
    const built = parts(this.ctx);
    this.#websocket = built.websocket;
    this.#http1 = built.http1;
    this.#http2 = built.http2;
    this.#server = createServer({
      // Bounded by default: a slow or silent client cannot hold a socket forever.
      headersTimeout: 30_000,
      requestTimeout: 0,
      keepAliveTimeout: 60_000,
      maxHeaderSize: config.headerLimits.maxSize,
    });
    this.#configureTls(config);
    // The node:http server only sees connections handed over for an upgrade (http1.ts parses the
    // rest itself); a plain request after a refused upgrade is not served there.
    this.#server.on('request', (_req: IncomingMessage, res: ServerResponse) => {
      res.shouldKeepAlive = false;
      res.writeHead(400, { 'content-type': 'text/plain', connection: 'close' });
      res.end('expected an upgrade request (holdfast)\n');
    });
    this.#server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) =>
      this.#websocket.handleUpgrade(req, socket, head),
    );
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      const errors = this.stats.errors!;
      const reason = err.code === 'HPE_HEADER_OVERFLOW' ? 'header-too-large' : 'bad-request';
      errors[reason] = (errors[reason] ?? 0) + 1;
      if (socket.writable) {
        const status =
          reason === 'header-too-large' ? '431 Request Header Fields Too Large' : '400 Bad Request';
        socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
      } else {
        socket.destroy();
      }
    });
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
      else this.#http1.handleConnection(tls, this.#toUpgrade);
    });
    this.#tls = server;
  }

  /** Shutdown: every part asks its clients to go; idle HTTP/1.1 connections close now. */
  drain(): void {
    this.#websocket.drain?.();
    this.#http1.drain?.();
    this.#http2.drain?.();
    this.#server.closeIdleConnections();
  }

  readonly #toUpgrade = (socket: Socket): void => {
    this.#server.emit('connection', socket);
    socket.resume();
  };

  readonly accept = (socket: Socket): void => {
    this.stats.accepted++;
    this.live++;
    // Module-level listeners: an upgraded WebSocket keeps its socket for
    // hours, and a closure here would stay with it.
    (socket as CountedSocket)[kProxy] = this;
    socket.once('close', onAcceptedClose);
    socket.on('error', ignore);
    if (this.#tls !== undefined) {
      this.#tls.emit('connection', socket);
      return;
    }
    // Look at the first bytes to tell HTTP/2 prior knowledge from HTTP/1.1; a
    // client may send them a few at a time, so wait while they match the preface.
    let seen: Buffer | undefined;
    const onFirst = (data: Buffer): void => {
      seen = seen === undefined ? data : Buffer.concat([seen, data]);
      const n = Math.min(seen.length, PREFACE.length);
      const h2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (h2 && n < PREFACE.length) return;
      socket.removeListener('data', onFirst);
      socket.pause();
      socket.unshift(seen);
      if (h2) this.#http2.handleConnection(socket);
      else {
        this.#http1.handleConnection(socket, this.#toUpgrade);
        socket.resume();
      }
    };
    socket.on('data', onFirst);
    socket.resume();
  };
}

const kProxy = Symbol('holdfast.http.proxy');
interface CountedSocket extends Socket {
  [kProxy]: HttpProxy;
}
function onAcceptedClose(this: CountedSocket): void {
  const proxy = this[kProxy];
  proxy.live--;
  proxy.stats.closed++;
}
function ignore(): void {}

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
