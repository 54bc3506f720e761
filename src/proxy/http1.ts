/**
 * HTTP/1.1 downstream: requests from the listener's node:http server, each
 * balanced on its own over the service's upstream pools (http-forward.ts).
 * Keep-alive client connections are asked to go with `Connection: close`
 * (drain, shutdown, `maxConnectionAge`), never cut between requests.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Timer } from '../cluster/clock.ts';
import type { ServiceConfig } from '../config/schema.ts';
import type { RequestHandler } from './http.ts';
import { errorReply, type ProxyFailure } from './http-errors.ts';
import type { Downstream, HttpPlane } from './http-forward.ts';
import { appendForwarded, forwardableHeaders, maxAge } from './http-headers.ts';
import { jittered } from './http-keepalive.ts';

/** Per client connection: requests in flight and whether it was asked to go. */
interface ClientConn {
  readonly socket: Socket;
  active: number;
  leaving: boolean;
  ageTimer: Timer | undefined;
}

export class Http1Handler implements RequestHandler {
  readonly #plane: HttpPlane;
  readonly #conns = new Map<Socket, ClientConn>();
  #maxHeaders: number;
  #maxAgeMs: number;
  #draining = false;

  constructor(plane: HttpPlane) {
    this.#plane = plane;
    this.#maxHeaders = plane.ctx.config.headerLimits.maxCount;
    this.#maxAgeMs = maxAge(plane.ctx.config);
  }

  configure(config: ServiceConfig): void {
    this.#plane.configure(config);
    this.#maxHeaders = config.headerLimits.maxCount;
    this.#maxAgeMs = maxAge(config);
  }

  /** Ask every client connection to go: idle ones close now, busy ones after their response. */
  drain(): void {
    this.#draining = true;
    for (const c of this.#conns.values()) this.#leave(c);
    this.#plane.drain();
  }

  #conn(socket: Socket): ClientConn {
    let c = this.#conns.get(socket);
    if (c === undefined) {
      c = { socket, active: 0, leaving: this.#draining, ageTimer: undefined };
      const conn = c;
      this.#conns.set(socket, c);
      if (this.#maxAgeMs > 0) {
        c.ageTimer = this.#plane.ctx.clock.setTimer(() => this.#leave(conn), jittered(this.#maxAgeMs, 0.1));
      }
      socket.once('close', () => {
        conn.ageTimer?.cancel();
        this.#conns.delete(socket);
      });
    }
    return c;
  }

  #leave(c: ClientConn): void {
    c.leaving = true;
    if (c.active === 0) c.socket.end();
  }

  handleRequest(req: IncomingMessage, res: ServerResponse): void {
    const conn = this.#conn(req.socket);
    conn.active++;
    res.once('close', () => {
      conn.active--;
      if (conn.leaving && conn.active === 0 && !conn.socket.destroyed) conn.socket.end();
    });
    if (conn.leaving) res.shouldKeepAlive = false;
    const plane = this.#plane;
    if (req.rawHeaders.length / 2 > this.#maxHeaders) {
      plane.count('too-many-headers');
      res.writeHead(431, {
        'content-type': 'text/plain',
        connection: 'close',
        'x-holdfast-error': 'too-many-headers',
      });
      res.end(`431 more than ${this.#maxHeaders} request header fields (holdfast)\n`);
      return;
    }
    plane.forward(new Http1Downstream(req, res, conn));
  }
}

class Http1Downstream implements Downstream {
  readonly method: string;
  readonly path: string;
  readonly authority: string | undefined;
  readonly headers;
  readonly body;
  readonly grpc = false;
  readonly pick;
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #conn: ClientConn;

  constructor(req: IncomingMessage, res: ServerResponse, conn: ClientConn) {
    this.#req = req;
    this.#res = res;
    this.#conn = conn;
    const h = req.headers;
    this.method = req.method ?? 'GET';
    this.path = req.url ?? '/';
    this.authority = h.host;
    const headers = forwardableHeaders(h);
    const socket = req.socket;
    const proto = (socket as Socket & { encrypted?: boolean }).encrypted === true ? 'https' : 'http';
    appendForwarded(headers, { ip: socket.remoteAddress, proto, host: h.host });
    this.headers = headers;
    const hasBody =
      h['transfer-encoding'] !== undefined ||
      (h['content-length'] !== undefined && h['content-length'] !== '0');
    this.body = hasBody ? req : undefined;
    this.pick = {
      now: 0,
      clientIp: socket.remoteAddress,
      clientPort: socket.remotePort,
      localIp: socket.localAddress,
      localPort: socket.localPort,
      host: h.host,
      path: this.path,
      headers: h,
    };
  }

  get gone(): boolean {
    return this.#res.destroyed && !this.#res.writableFinished;
  }

  respond(status: number, headers: IncomingHttpHeaders, endStream: boolean): void {
    const res = this.#res;
    if (res.headersSent || res.destroyed) return;
    const out = forwardableHeaders(headers);
    if (this.#conn.leaving) out.connection = 'close';
    res.writeHead(status, out);
    if (endStream) res.end();
  }

  write(chunk: Buffer): boolean {
    return this.#res.destroyed ? true : this.#res.write(chunk);
  }

  onDrain(fn: () => void): void {
    this.#res.once('drain', fn);
  }

  end(trailers: IncomingHttpHeaders | undefined): void {
    const res = this.#res;
    if (res.destroyed) return;
    if (trailers !== undefined && res.chunkedEncoding) {
      const t = forwardableHeaders(trailers);
      if (Object.keys(t).length > 0) res.addTrailers(t);
    }
    res.end();
  }

  fail(kind: ProxyFailure): void {
    const res = this.#res;
    if (res.destroyed) return;
    if (res.headersSent) {
      // The response already started: cutting the connection is the only honest signal left.
      res.destroy();
      return;
    }
    const reply = errorReply(kind);
    if (this.#conn.leaving) reply.headers.connection = 'close';
    // An unread request body would leave the connection out of step: close it.
    if (this.body !== undefined && !this.#req.complete) reply.headers.connection = 'close';
    res.writeHead(reply.status, reply.headers);
    res.end(reply.body);
  }

  leave(): void {
    this.#conn.leaving = true;
    if (!this.#res.headersSent) this.#res.shouldKeepAlive = false;
  }

  abort(): void {
    this.#res.destroy();
  }

  onClose(fn: (complete: boolean) => void): void {
    this.#res.once('close', () => fn(this.#res.writableFinished));
  }
}
