/**
 * WebSocket data plane (RFC 6455) for `protocol: http` listeners: the
 * upgrade is forwarded to a picked backend, then frames are relayed with
 * only their headers parsed. The gateway sends its own heartbeats on both
 * legs, closes connections in protocol terms (1001, 1011, 1012, 1002,
 * 1009) and can rebalance live connections gradually.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { connect, isIPv6, type Socket } from 'node:net';
import type { PickContext } from '../balance/types.ts';
import type { Backend } from '../cluster/backend.ts';
import type { Timer } from '../cluster/clock.ts';
import type { LeaveReason, ProxiedConnection } from '../cluster/connection.ts';
import { Rebalancer } from '../cluster/rebalance.ts';
import type { ServiceConfig } from '../config/schema.ts';
import type { HttpContext, UpgradeHandler } from './http.ts';
import { SourceAddressPool } from './source-address.ts';
import {
  CLOSE_GOING_AWAY,
  CLOSE_INTERNAL_ERROR,
  CLOSE_SERVICE_RESTART,
  closeCodeFor,
  closeFrame,
  FrameReader,
  type FrameError,
  type FrameSink,
  PING_TO_BACKEND,
  PING_TO_CLIENT,
} from './websocket-frames.ts';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Largest backend handshake response head accepted. */
const MAX_RESPONSE_HEAD = 16_384;

/** Settings read per new connection (a reload replaces them). */
export interface WebSocketSettings {
  /** Gateway heartbeats: ping a quiet leg every `intervalMs`; undefined = off. */
  pingIntervalMs: number | undefined;
  pingTimeoutMs: number;
  maxFrameSize: number;
  maxMessageSize: number;
  closeTimeoutMs: number;
  /** Connections older than this (±10 %) are asked to reconnect; undefined = off. */
  maxAgeMs: number | undefined;
  connectTimeoutMs: number;
  keepAliveMs: number | undefined;
  maxConnections: number | undefined;
  sources: SourceAddressPool;
  maxAttempts: number;
}

export function websocketSettings(config: ServiceConfig): WebSocketSettings {
  const ws = config.websocket;
  return {
    pingIntervalMs: ws.ping === 'off' ? undefined : ws.ping.interval,
    pingTimeoutMs: ws.ping === 'off' ? 0 : ws.ping.timeout,
    maxFrameSize: ws.maxFrameSize,
    maxMessageSize: ws.maxMessageSize,
    closeTimeoutMs: ws.closeTimeout,
    maxAgeMs: config.maxConnectionAge === 'off' ? undefined : config.maxConnectionAge,
    connectTimeoutMs: config.timeouts.connect,
    keepAliveMs: config.tcpKeepAlive === 'off' ? undefined : config.tcpKeepAlive,
    maxConnections: config.limits.maxConnections,
    sources: new SourceAddressPool(config.sourceAddresses),
    maxAttempts: 3,
  };
}

/** The close code a client is sent when its connection is asked to leave. */
function clientCodeFor(reason: LeaveReason): number {
  return reason === 'rebalance' || reason === 'max-age' ? CLOSE_SERVICE_RESTART : CLOSE_GOING_AWAY;
}

const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  426: 'Upgrade Required',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

/**
 * The WebSocket part of an HTTP service: takes upgrade requests, owns the
 * heartbeat tick of its connections and the service's rebalancer.
 */
export class WebSocketProxy implements UpgradeHandler {
  readonly ctx: HttpContext;
  settings: WebSocketSettings;
  /** Open (relaying or closing) connections, visited by the heartbeat tick. */
  readonly connections = new Set<WsConnection>();
  readonly rebalancer: Rebalancer;
  #tick: Timer | undefined;
  #tickMs = 1000;
  #upgrading = 0;

  constructor(ctx: HttpContext) {
    this.ctx = ctx;
    this.settings = websocketSettings(ctx.config);
    this.rebalancer = new Rebalancer(ctx.cluster, {
      clock: ctx.clock,
      log: ctx.log,
      settings: ctx.config.rebalance,
      // Persistence seam: a connection whose client the policy holds on its
      // backend (LVS persistence, hashing) would come straight back; never move it.
      isHeld: (conn, backend) =>
        conn instanceof WsConnection && ctx.cluster.affinity(conn.pickContext(ctx.clock.now())) === backend,
    });
    this.#updateTick();
  }

  configure(config: ServiceConfig): void {
    this.settings = websocketSettings(config);
    this.rebalancer.configure(config.rebalance);
    this.#updateTick();
  }

  #updateTick(): void {
    const s = this.settings;
    let ms = Math.min(1000, s.closeTimeoutMs / 5);
    if (s.pingIntervalMs !== undefined) ms = Math.min(ms, Math.min(s.pingIntervalMs, s.pingTimeoutMs) / 10);
    this.#tickMs = Math.max(20, ms);
  }

  /** Count a protocol error for /metrics. */
  count(reason: string): void {
    const errors = (this.ctx.stats.errors ??= {});
    errors[reason] = (errors[reason] ?? 0) + 1;
  }

  refuse(reason: string): void {
    const refused = this.ctx.stats.refused;
    refused[reason] = (refused[reason] ?? 0) + 1;
  }

  handleUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.pause();
    const s = this.settings;
    const h = req.headers;
    const upgrade = h.upgrade?.toLowerCase() ?? '';
    const key = h['sec-websocket-key'];
    if (req.method !== 'GET' || !upgrade.split(',').some((v) => v.trim() === 'websocket')) {
      this.count('ws-bad-handshake');
      reject(socket, 400, 'holdfast proxies only WebSocket upgrades (GET with Upgrade: websocket)');
      return;
    }
    if (h['sec-websocket-version'] !== '13') {
      this.count('ws-unsupported-version');
      reject(socket, 426, 'WebSocket version 13 is required', 'sec-websocket-version: 13\r\n');
      return;
    }
    if (typeof key !== 'string' || Buffer.from(key, 'base64').length !== 16) {
      this.count('ws-bad-handshake');
      reject(socket, 400, 'Sec-WebSocket-Key must be 16 bytes in base64');
      return;
    }
    if (s.maxConnections !== undefined && this.connections.size + this.#upgrading >= s.maxConnections) {
      this.refuse('limit');
      reject(socket, 503, 'the service is at its connection limit; retry later');
      return;
    }
    if (s.keepAliveMs !== undefined) socket.setKeepAlive(true, s.keepAliveMs);
    new WsConnection(this, req, socket, head, key).start();
  }

  upgradeStarted(): void {
    this.#upgrading++;
  }

  upgradeEnded(): void {
    this.#upgrading--;
  }

  /** A connection finished its handshake and now relays. */
  opened(conn: WsConnection): void {
    this.connections.add(conn);
    if (this.#tick === undefined) this.#schedule();
    this.rebalancer.start();
  }

  closed(conn: WsConnection): void {
    this.connections.delete(conn);
    if (this.connections.size === 0) this.rebalancer.stop();
  }

  #schedule(): void {
    this.#tick = this.ctx.clock.setTimer(() => {
      this.#tick = undefined;
      const now = this.ctx.clock.now();
      for (const conn of this.connections) conn.tick(now);
      if (this.connections.size > 0) this.#schedule();
    }, this.#tickMs);
  }
}

function reject(socket: Socket, status: number, message: string, extra = ''): void {
  const body = `${message}\n`;
  if (socket.writable) {
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? ''}\r\nconnection: close\r\ncontent-type: text/plain\r\n${extra}` +
        `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  } else {
    socket.destroy();
  }
}

function forwardedFor(ip: string): string {
  return isIPv6(ip) ? `"[${ip}]"` : ip;
}

/**
 * One direction of the relay: reads one peer's frames and writes them to the
 * other peer. It is its own FrameSink, so a connection costs two of these
 * and no closures per frame.
 */
class Direction extends FrameReader implements FrameSink {
  readonly conn: WsConnection;
  readonly input: Socket;
  readonly output: Socket;
  /** The gateway wants to send its ping to `output` at the next boundary. */
  pendingPing = false;
  /** Close code to send to `output` at the next boundary (0: none). */
  pendingClose = 0;
  /** A close frame went to `output`: nothing more may follow it. */
  closeSent = false;
  /** The input peer sent its close frame. */
  closeSeen = false;

  constructor(conn: WsConnection, input: Socket, output: Socket, fromClient: boolean, s: WebSocketSettings) {
    super(fromClient, undefined, s);
    this.conn = conn;
    this.input = input;
    this.output = output;
  }

  forward(bytes: Buffer): boolean {
    const out = this.output;
    return out.writableEnded ? true : out.write(bytes);
  }

  pong(): void {
    this.conn.pongFrom(this.fromClient);
  }

  close(): void {
    this.closeSeen = true;
    this.conn.closeFrameFrom(this);
  }

  error(reason: FrameError): void {
    this.conn.frameError(this, reason);
  }

  boundary(): void {
    this.wantBoundary = false;
    this.flush();
  }

  /** Write pending gateway frames now that `output` is between frames. */
  flush(): void {
    const out = this.output;
    if (this.closeSent || out.writableEnded || out.destroyed) {
      this.pendingPing = false;
      return;
    }
    if (this.pendingPing) {
      this.pendingPing = false;
      out.write(this.fromClient ? PING_TO_BACKEND : PING_TO_CLIENT);
    }
    if (this.pendingClose !== 0) {
      out.write(closeFrame(this.pendingClose, this.fromClient));
      this.pendingClose = 0;
      this.closeSent = true;
      this.discard = true;
    }
  }

  /** Queue a gateway frame for `output`; sent now when between frames. */
  inject(close: number): void {
    if (close === 0) this.pendingPing = true;
    else if (this.pendingClose === 0) this.pendingClose = close;
    if (this.atBoundary) this.flush();
    else this.wantBoundary = true;
  }
}

type Phase = 'handshake' | 'open' | 'closing' | 'closed';

/** One proxied WebSocket: a client socket anchored to a backend socket. */
class WsConnection implements ProxiedConnection {
  readonly openedAt: number;
  readonly #proxy: WebSocketProxy;
  readonly #client: Socket;
  #req: IncomingMessage | undefined;
  #head: Buffer | undefined;
  readonly #key: string;
  readonly clientIp: string | undefined;
  readonly clientPort: number | undefined;
  readonly host: string | undefined;
  readonly path: string | undefined;
  #upstream: Socket | undefined;
  #backend: Backend | undefined;
  #tried: Set<Backend> | undefined;
  #phase: Phase = 'handshake';
  #up: Direction | undefined;
  #down: Direction | undefined;
  /** Heartbeat state per peer: data seen since the last check, outstanding ping time (0: none), last proof of life. */
  #clientRx = false;
  #backendRx = false;
  #clientPingAt = -1;
  #backendPingAt = -1;
  #clientOkAt: number;
  #backendOkAt: number;
  #ageDeadline = Infinity;
  #closingSince = 0;

  constructor(proxy: WebSocketProxy, req: IncomingMessage, client: Socket, head: Buffer, key: string) {
    this.#proxy = proxy;
    this.#client = client;
    this.#req = req;
    this.#head = head.length > 0 ? head : undefined;
    this.#key = key;
    this.openedAt = proxy.ctx.clock.now();
    this.#clientOkAt = this.#backendOkAt = this.openedAt;
    this.clientIp = client.remoteAddress;
    this.clientPort = client.remotePort;
    this.host = req.headers.host;
    this.path = req.url;
    client.on('error', () => {});
    client.on('close', this.#onSocketClose);
    proxy.upgradeStarted();
  }

  get bytesIn(): number {
    return this.#upstream?.bytesRead ?? 0;
  }

  get bytesOut(): number {
    return this.#upstream?.bytesWritten ?? 0;
  }

  /** What the policy saw when it picked (for affinity checks). */
  pickContext(now: number): PickContext {
    return { now, clientIp: this.clientIp, clientPort: this.clientPort, host: this.host, path: this.path };
  }

  start(): void {
    const proxy = this.#proxy;
    const ctx = proxy.ctx;
    const req = this.#req!;
    const pickCtx: PickContext = {
      ...this.pickContext(ctx.clock.now()),
      localIp: this.#client.localAddress,
      localPort: this.#client.localPort,
      headers: req.headers,
    };
    const backend = ctx.cluster.pickConnection(pickCtx, this.#tried);
    if (backend === undefined) {
      const reason = this.#tried === undefined ? 'no-backend' : 'connect-failed';
      proxy.refuse(reason);
      ctx.log.warn({ service: ctx.cluster.name, client: this.clientIp, reason }, 'WebSocket upgrade refused');
      this.#endHandshake();
      reject(
        this.#client,
        reason === 'no-backend' ? 503 : 502,
        reason === 'no-backend' ? 'no backend can take the connection' : 'no backend could be reached',
      );
      return;
    }
    this.#backend = backend;
    ctx.cluster.register(backend, this);
    const s = proxy.settings;
    const upstream = connect({
      host: backend.address.host,
      port: backend.address.port,
      localAddress: s.sources.next(backend.address.host),
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: s.keepAliveMs !== undefined,
      keepAliveInitialDelay: s.keepAliveMs ?? 0,
      timeout: s.connectTimeoutMs,
    });
    this.#upstream = upstream;
    upstream.on('timeout', this.#onHandshakeTimeout);
    upstream.on('error', this.#onConnectError);
    upstream.once('connect', this.#onConnect);
  }

  #endHandshake(): void {
    if (this.#req === undefined) return;
    this.#req = undefined;
    this.#head = undefined;
    this.#proxy.upgradeEnded();
  }

  #onHandshakeTimeout = (): void => {
    this.#upstream?.destroy(new Error('backend did not complete the WebSocket handshake in time'));
  };

  #onConnectError = (err: Error): void => {
    const backend = this.#backend!;
    const ctx = this.#proxy.ctx;
    backend.connectFailures++;
    ctx.cluster.unregister(backend, this);
    this.#upstream?.removeAllListeners();
    this.#upstream?.destroy();
    this.#upstream = undefined;
    this.#backend = undefined;
    ctx.log.warn(
      { service: ctx.cluster.name, backend: backend.key, err: err.message },
      'backend connect failed',
    );
    if (this.#phase !== 'handshake' || this.#client.destroyed) return;
    (this.#tried ??= new Set()).add(backend);
    if (this.#tried.size >= this.#proxy.settings.maxAttempts) {
      this.#proxy.refuse('connect-failed');
      this.#endHandshake();
      reject(this.#client, 502, 'no backend could be reached');
      return;
    }
    this.start();
  };

  #onConnect = (): void => {
    const upstream = this.#upstream!;
    const req = this.#req!;
    if (this.#client.destroyed) {
      this.#fail();
      return;
    }
    upstream.off('error', this.#onConnectError);
    upstream.on('error', this.#onHandshakeError);
    // The handshake as the client sent it, plus who the client is.
    const ip = this.clientIp ?? '';
    let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
    let xff: string | undefined;
    let fwd: string | undefined;
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!;
      const lower = name.toLowerCase();
      if (lower === 'x-forwarded-for') xff = xff === undefined ? raw[i + 1] : `${xff}, ${raw[i + 1]}`;
      else if (lower === 'forwarded') fwd = fwd === undefined ? raw[i + 1] : `${fwd}, ${raw[i + 1]}`;
      else head += `${name}: ${raw[i + 1]}\r\n`;
    }
    const host = req.headers.host;
    const me = `for=${forwardedFor(ip)}${host !== undefined ? `;host="${host}"` : ''};proto=http`;
    head += `X-Forwarded-For: ${xff === undefined ? ip : `${xff}, ${ip}`}\r\n`;
    head += `Forwarded: ${fwd === undefined ? me : `${fwd}, ${me}`}\r\n`;
    if (req.headers['x-forwarded-proto'] === undefined) head += 'X-Forwarded-Proto: http\r\n';
    upstream.write(`${head}\r\n`);
    let got: Buffer | undefined;
    const onData = (chunk: Buffer): void => {
      got = got === undefined ? chunk : Buffer.concat([got, chunk]);
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) {
        if (got.length > MAX_RESPONSE_HEAD) {
          upstream.off('data', onData);
          this.#badBackend('the backend sent an oversized handshake response');
        }
        return;
      }
      upstream.off('data', onData);
      upstream.pause();
      this.#onResponse(got.subarray(0, end + 4), got.subarray(end + 4));
    };
    upstream.on('data', onData);
  };

  /** Connected but no answer in time (a frozen backend still accepts): try another backend. */
  #onHandshakeError = (err: Error): void => {
    if (this.#phase === 'handshake') this.#onConnectError(err);
  };

  #badBackend(why: string): void {
    const ctx = this.#proxy.ctx;
    this.#proxy.count('ws-backend-handshake');
    ctx.log.warn(
      { service: ctx.cluster.name, backend: this.#backend?.key, reason: why },
      'WebSocket handshake failed',
    );
    this.#endHandshake();
    reject(this.#client, 502, why);
    this.#fail();
  }

  #onResponse(head: Buffer, rest: Buffer): void {
    const upstream = this.#upstream!;
    const client = this.#client;
    const text = head.toString('latin1');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(text);
    if (status === null) {
      this.#badBackend('the backend answered the WebSocket handshake with something other than HTTP/1.1');
      return;
    }
    if (status[1] !== '101') {
      // The backend refused the upgrade (401, 403, 404…): the client gets its answer as is.
      this.#endHandshake();
      upstream.setTimeout(0);
      client.write(head);
      if (rest.length > 0) client.write(rest);
      upstream.on('close', this.#onSocketClose);
      upstream.pipe(client);
      client.resume();
      this.#phase = 'closing';
      this.#closingSince = this.#proxy.ctx.clock.now();
      return;
    }
    const lines = text.toLowerCase().split('\r\n');
    const header = (name: string): string | undefined =>
      lines
        .find((l) => l.startsWith(`${name}:`))
        ?.slice(name.length + 1)
        .trim();
    const accept = createHash('sha1')
      .update(this.#key + GUID)
      .digest('base64');
    const acceptLine = text.split('\r\n').find((l) => l.toLowerCase().startsWith('sec-websocket-accept:'));
    if (header('upgrade') !== 'websocket' || acceptLine?.slice(21).trim() !== accept) {
      this.#badBackend('the backend answered 101 without a valid WebSocket accept');
      return;
    }
    const compression = header('sec-websocket-extensions')?.includes('permessage-deflate') === true;
    const proxy = this.#proxy;
    const s = proxy.settings;
    const early = this.#head;
    this.#endHandshake();
    upstream.setTimeout(0);
    upstream.off('timeout', this.#onHandshakeTimeout);
    upstream.off('error', this.#onHandshakeError);
    upstream.on('error', () => {});
    upstream.on('close', this.#onSocketClose);
    this.#phase = 'open';
    const up = new Direction(this, client, upstream, true, s);
    const down = new Direction(this, upstream, client, false, s);
    up.compression = down.compression = compression;
    this.#up = up;
    this.#down = down;
    if (s.maxAgeMs !== undefined)
      this.#ageDeadline = this.openedAt + s.maxAgeMs * (0.9 + 0.2 * Math.random());
    const now = proxy.ctx.clock.now();
    this.#clientOkAt = this.#backendOkAt = now;
    client.write(head);
    proxy.opened(this);
    client.on('data', this.#onClientData);
    upstream.on('data', this.#onBackendData);
    client.on('drain', this.#onClientDrain);
    upstream.on('drain', this.#onBackendDrain);
    client.on('end', this.#onClientEnd);
    upstream.on('end', this.#onBackendEnd);
    if (rest.length > 0) this.#onBackendData(rest);
    if (early !== undefined) this.#onClientData(early);
    client.resume();
    upstream.resume();
  }

  #onClientData = (chunk: Buffer): void => {
    this.#clientRx = true;
    if (!this.#up!.push(chunk)) this.#client.pause();
  };

  #onBackendData = (chunk: Buffer): void => {
    this.#backendRx = true;
    if (!this.#down!.push(chunk)) this.#upstream!.pause();
  };

  #onClientDrain = (): void => {
    this.#upstream!.resume();
  };

  #onBackendDrain = (): void => {
    this.#client.resume();
  };

  #onClientEnd = (): void => {
    const up = this.#upstream!;
    if (!up.writableEnded) up.end();
  };

  #onBackendEnd = (): void => {
    if (!this.#client.writableEnded) this.#client.end();
  };

  #onSocketClose = (hadError: boolean): void => {
    const client = this.#client;
    const upstream = this.#upstream;
    if (this.#phase === 'handshake') {
      // The client left before the backend answered.
      this.#fail();
      return;
    }
    if (hadError) {
      if (!client.destroyed) client.destroy();
      if (upstream !== undefined && !upstream.destroyed) upstream.destroy();
    }
    if (client.destroyed && (upstream === undefined || upstream.destroyed)) this.#finish();
  };

  /** Give up on a connection that never opened: free the backend slot and both sockets. */
  #fail(): void {
    this.#endHandshake();
    this.#upstream?.destroy();
    if (!this.#client.writableEnded) this.#client.destroy();
    this.#finish();
  }

  #finish(): void {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    const backend = this.#backend;
    if (backend !== undefined) {
      backend.bytesReceivedClosed += this.#upstream?.bytesRead ?? 0;
      backend.bytesSentClosed += this.#upstream?.bytesWritten ?? 0;
      this.#proxy.ctx.cluster.unregister(backend, this);
    }
    this.#proxy.closed(this);
  }

  /** A pong answering the gateway's ping: the peer is alive. */
  pongFrom(client: boolean): void {
    if (client) this.#clientRx = true;
    else this.#backendRx = true;
  }

  /** A peer's close frame was read by `dir`. */
  closeFrameFrom(dir: Direction): void {
    if (this.#phase === 'open') {
      // A peer-initiated close passes through; no more gateway frames on that path.
      this.#phase = 'closing';
      this.#closingSince = this.#proxy.ctx.clock.now();
      return;
    }
    // The gateway started the close: the peer answered; end its socket once our close went out.
    if (dir.input.writable && (dir.fromClient ? this.#down! : this.#up!).closeSent) dir.input.end();
  }

  frameError(dir: Direction, reason: FrameError): void {
    const proxy = this.#proxy;
    proxy.count(reason);
    proxy.ctx.log.debug(
      {
        service: proxy.ctx.cluster.name,
        backend: this.#backend?.key,
        from: dir.fromClient ? 'client' : 'backend',
        reason,
      },
      'WebSocket frame refused',
    );
    const other = dir.fromClient ? this.#down! : this.#up!;
    // The offender gets the code for what it did; the other peer hears that its partner is gone.
    this.#startClosing(
      dir.fromClient ? closeCodeFor(reason) : CLOSE_INTERNAL_ERROR,
      dir.fromClient ? CLOSE_GOING_AWAY : closeCodeFor(reason),
    );
    // The offending peer is failed: its socket is ended right after our close frame.
    if (other.closeSent) dir.input.end();
    else dir.input.destroy();
  }

  /**
   * Gateway-initiated close: `clientCode` to the client, `backendCode` to the
   * backend, each at its next frame boundary; then each socket ends when its
   * peer answers, or both are destroyed after the close timeout.
   */
  #startClosing(clientCode: number, backendCode: number): void {
    if (this.#phase !== 'open' && this.#phase !== 'closing') return;
    if (this.#phase === 'open') {
      this.#phase = 'closing';
      this.#closingSince = this.#proxy.ctx.clock.now();
    }
    const down = this.#down!;
    const up = this.#up!;
    if (!down.closeSent && !down.closeSeen) down.inject(clientCode);
    if (!up.closeSent && !up.closeSeen) up.inject(backendCode);
    // A peer that already sent its close frame has nothing more to say; end it once our close is out.
    if (up.closeSeen && down.closeSent && !this.#client.writableEnded) this.#client.end();
    if (down.closeSeen && up.closeSent && !this.#upstream!.writableEnded) this.#upstream!.end();
  }

  /** Heartbeats, max age and close timeouts; called by the proxy's shared tick. */
  tick(now: number): void {
    const s = this.#proxy.settings;
    if (this.#phase === 'closing') {
      if (now - this.#closingSince >= s.closeTimeoutMs) this.destroy();
      return;
    }
    if (this.#phase !== 'open') return;
    if (now >= this.#ageDeadline) {
      this.leave('max-age');
      return;
    }
    const interval = s.pingIntervalMs;
    if (interval === undefined) return;
    // Client leg.
    if (this.#clientRx) {
      this.#clientRx = false;
      this.#clientPingAt = -1;
      this.#clientOkAt = now;
    } else if (this.#clientPingAt >= 0) {
      if (now - this.#clientPingAt >= s.pingTimeoutMs) {
        this.#legDead(true);
        return;
      }
    } else if (now - this.#clientOkAt >= interval) {
      this.#clientPingAt = now;
      this.#down!.inject(0);
    }
    // Backend leg.
    if (this.#backendRx) {
      this.#backendRx = false;
      this.#backendPingAt = -1;
      this.#backendOkAt = now;
    } else if (this.#backendPingAt >= 0) {
      if (now - this.#backendPingAt >= s.pingTimeoutMs) this.#legDead(false);
    } else if (now - this.#backendOkAt >= interval) {
      this.#backendPingAt = now;
      this.#up!.inject(0);
    }
  }

  /** A leg missed its pong: free the other side in protocol terms, drop the dead one. */
  #legDead(client: boolean): void {
    const proxy = this.#proxy;
    proxy.count(client ? 'ws-client-heartbeat-timeout' : 'ws-backend-heartbeat-timeout');
    proxy.ctx.log.info(
      { service: proxy.ctx.cluster.name, backend: this.#backend?.key, leg: client ? 'client' : 'backend' },
      'WebSocket peer missed its heartbeat; closing',
    );
    if (client) {
      this.#client.destroy();
      this.#startClosing(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY);
    } else {
      this.#upstream!.destroy();
      this.#startClosing(CLOSE_INTERNAL_ERROR, CLOSE_GOING_AWAY);
      // The client's answer ends it; if the backend was frozen mid-frame, no close can be sent.
      if (!this.#down!.closeSent) this.#client.destroy();
    }
  }

  leave(reason: LeaveReason): void {
    if (this.#phase === 'open') {
      this.#startClosing(clientCodeFor(reason), CLOSE_GOING_AWAY);
    } else if (this.#phase === 'handshake') {
      this.#endHandshake();
      reject(this.#client, 503, 'the backend is going away; retry');
      this.#fail();
    }
  }

  destroy(): void {
    this.#client.destroy();
    this.#upstream?.destroy();
    if (this.#phase === 'handshake') this.#fail();
  }
}
