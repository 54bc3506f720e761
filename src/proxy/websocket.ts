/**
 * WebSocket data plane (RFC 6455) for `protocol: http` listeners: the
 * upgrade is forwarded to a picked backend, then frames are relayed with
 * only their headers parsed. The gateway sends its own heartbeats on both
 * legs, closes connections in protocol terms (1001, 1011, 1012, 1002,
 * 1009) and can rebalance live connections gradually.
 */
import { createHash } from 'node:crypto';
import { isIPv6, type Socket } from 'node:net';
import type { Backend } from '../cluster/backend.ts';
import type { Timer } from '../cluster/clock.ts';
import { DeadlineWheel, type WheelEntry } from '../deadline-wheel.ts';
import type { LeaveReason } from '../cluster/connection.ts';
import { Rebalancer } from '../cluster/rebalance.ts';
import type { ServiceConfig } from '../config/schema.ts';
import type { HttpContext, UpgradeHandler, UpgradeRequest } from './http.ts';
import { readEarly, Relay, relayHeld } from './relay.ts';
import { peerIp } from './socket-address.ts';
import { afterRead, ownBytes, readThrough } from './socket-reads.ts';
import type { Leg } from './stream-leg.ts';
import { connectBackend, type RelaySettings, relaySettings, SocketPickContext } from './upstream.ts';
import {
  checkClose,
  CLOSE_BAD_GATEWAY,
  CLOSE_GOING_AWAY,
  CLOSE_INTERNAL_ERROR,
  CLOSE_SERVICE_RESTART,
  closeCodeFor,
  closeFrame,
  type FrameError,
  isOwnPong,
  OP_BINARY,
  OP_CLOSE,
  OP_CONTINUATION,
  OP_PONG,
  PING_TO_BACKEND,
  PING_TO_CLIENT,
  TOKEN,
} from './websocket-frames.ts';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Largest backend handshake response head accepted. */
const MAX_RESPONSE_HEAD = 16_384;

/** Settings read per new connection (a reload replaces them). */
export interface WebSocketSettings extends RelaySettings {
  /** Gateway heartbeats: ping a quiet leg every `intervalMs`; undefined = off. */
  pingIntervalMs: number | undefined;
  pingTimeoutMs: number;
  maxFrameSize: number;
  maxMessageSize: number;
  closeTimeoutMs: number;
  /** Connections older than this (±10 %) are asked to reconnect; undefined = off. */
  maxAgeMs: number | undefined;
}

export function websocketSettings(config: ServiceConfig): WebSocketSettings {
  const ws = config.websocket;
  return {
    ...relaySettings(config),
    pingIntervalMs: ws.ping === 'off' ? undefined : ws.ping.interval,
    pingTimeoutMs: ws.ping === 'off' ? 0 : ws.ping.timeout,
    maxFrameSize: ws.maxFrameSize,
    maxMessageSize: ws.maxMessageSize,
    closeTimeoutMs: ws.closeTimeout,
    maxAgeMs: config.maxConnectionAge === 'off' ? undefined : config.maxConnectionAge,
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
  /**
   * Open (relaying or closing) connections, each filed under the time of its
   * next check (a heartbeat due, max age, the close timeout): the tick
   * visits only those that are due, so idle connections cost it nothing.
   */
  readonly connections: DeadlineWheel<WsConnection>;
  readonly rebalancer: Rebalancer;
  #tick: Timer | undefined;
  #tickMs = 1000;
  /**
   * When the next tick is due: what a read stamps on its connection as the
   * time it last heard from that peer. The tick that follows a read is when
   * the old per-tick sweep saw the read, so heartbeats keep their timing,
   * and a read costs one store, no clock call.
   */
  heardAt = 0;
  // The tick's time and settings, for #fire (a method, not a closure per tick).
  #now = 0;
  #s: WebSocketSettings;

  constructor(ctx: HttpContext) {
    this.ctx = ctx;
    this.settings = this.#s = websocketSettings(ctx.config);
    this.rebalancer = new Rebalancer(ctx.cluster, {
      clock: ctx.clock,
      log: ctx.log,
      settings: ctx.config.rebalance,
      // Persistence seam: a connection whose client the policy holds on its
      // backend (LVS persistence, hashing) would come straight back; never move it.
      isHeld: relayHeld(ctx.cluster, ctx.clock),
    });
    this.#updateTick();
    this.connections = new DeadlineWheel(this.#tickMs, Math.floor(ctx.clock.now()));
    this.heardAt = this.connections.nextTickAt();
  }

  configure(config: ServiceConfig): void {
    this.settings = websocketSettings(config);
    this.rebalancer.configure(config.rebalance);
    this.#updateTick();
    // Heartbeat settings apply to open connections too: file each under its new next check.
    const now = Math.floor(this.ctx.clock.now());
    const wheel = this.connections;
    wheel.resize(this.#tickMs, now);
    for (const conn of [...wheel]) wheel.set(conn, conn.nextCheck(this.settings));
    this.heardAt = wheel.nextTickAt();
    this.#tick?.cancel();
    this.#tick = undefined;
    this.#schedule();
  }

  #updateTick(): void {
    const s = this.settings;
    let ms = Math.min(1000, s.closeTimeoutMs / 5);
    if (s.pingIntervalMs !== undefined) ms = Math.min(ms, Math.min(s.pingIntervalMs, s.pingTimeoutMs) / 10);
    // Whole milliseconds, so that slot boundaries fall on the integer times the checks use.
    this.#tickMs = Math.max(20, Math.floor(ms));
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

  handleUpgrade(req: UpgradeRequest, socket: Socket, head: Buffer): void {
    socket.pause();
    const h = req.headers;
    const upgrade = one(h.upgrade)?.toLowerCase() ?? '';
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
    if (this.ctx.overLimit()) {
      this.refuse('limit');
      reject(
        socket,
        503,
        'the service is at its connection limit; retry later',
        proxyError('connection-limit'),
      );
      return;
    }
    // TCP keepalive is already on: the HTTP proxy sets it on every client socket it accepts.
    // From here on the client's reads go through readEarly (reused buffers, see socket-reads.ts).
    readThrough(socket, readEarly);
    new WsConnection(this, new Handshake(socket, req, head, key, peerIp(socket))).start();
  }

  /** A connection finished its handshake and now relays. */
  opened(conn: WsConnection): void {
    this.connections.set(conn, conn.nextCheck(this.settings));
    this.#schedule();
    this.rebalancer.start();
  }

  /** An open connection's next check moved earlier (it started closing). */
  recheck(conn: WsConnection): void {
    // Not while the tick has it out of the wheel: the tick files it again itself.
    if (conn.wheelSlot < 0) return;
    this.connections.set(conn, conn.nextCheck(this.settings));
    this.#schedule();
  }

  closed(conn: WsConnection): void {
    this.connections.delete(conn);
    if (this.connections.size === 0) this.rebalancer.stop();
  }

  /** Run the tick at the next slot of the wheel, while any connection has a check to come. */
  #schedule(): void {
    if (this.#tick !== undefined || this.connections.timed === 0) return;
    const clock = this.ctx.clock;
    const now = clock.now();
    // After a quiet spell with no tick, reads stamp the end of the current slot,
    // which is what the tick about to run will see.
    const next = (Math.floor(now / this.#tickMs) + 1) * this.#tickMs;
    if (this.heardAt < next) this.heardAt = next;
    // A millisecond over: Node times a timer from the loop's cached time, which
    // lags the clock, and a tick that came before its slot would only arm another.
    this.#tick = clock.setTimer(
      this.#onTick,
      Math.max(1, Math.ceil(this.connections.nextTickAt() - now) + 1),
    );
  }

  readonly #onTick = (): void => {
    this.#tick = undefined;
    this.#now = Math.floor(this.ctx.clock.now());
    this.#s = this.settings;
    this.connections.advance(this.#now, this.#fire);
    this.heardAt = this.connections.nextTickAt();
    this.#schedule();
  };

  readonly #fire = (conn: WsConnection): void => {
    conn.check(this.#now, this.#s);
    if (conn.phase !== CLOSED) this.connections.set(conn, conn.nextCheck(this.#s));
  };
}

/**
 * What the gateway's own refusals of an upgrade say in `x-holdfast-error`,
 * the names the HTTP plane uses: a backend's own refusal reaches the client
 * unchanged, so this is how a client tells the two apart.
 */
function proxyError(kind: string): string {
  return `x-holdfast-error: ${kind}\r\n`;
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

/** A header's value where only one makes sense (set-cookie is the one kept as a list). */
function one(v: string | readonly string[] | undefined): string | undefined {
  return typeof v === 'string' ? v : v?.[0];
}

function forwardedFor(ip: string): string {
  return isIPv6(ip) ? `"[${ip}]"` : ip;
}

/**
 * What only the handshake needs: the client's request, bytes it sent after
 * it, the backends tried. Dropped (with the request and its headers) as soon
 * as the connection relays, so an open connection keeps none of it (except
 * the header map of a connection a policy holds by a header or cookie: see
 * `Relay.place`).
 */
class Handshake {
  /** The client's socket until the connection opens (then a leg of the connection). */
  readonly client: Socket;
  req: UpgradeRequest;
  head: Buffer | undefined;
  readonly key: string;
  readonly ip: string | undefined;
  tried: Set<Backend> | undefined;
  timer: Timer | undefined;
  /** The backend's response head so far. */
  got: Buffer | undefined;

  constructor(client: Socket, req: UpgradeRequest, head: Buffer, key: string, ip: string | undefined) {
    this.client = client;
    this.req = req;
    this.head = head.length > 0 ? head : undefined;
    this.key = key;
    this.ip = ip;
  }
}

const HANDSHAKE = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

// Per-direction flags (`uF`: client → backend, `dF`: backend → client).
/** Inside a fragmented message. */
const F_IN_MESSAGE = 1;
/** Drop all input (the gateway's close went out) but still watch for a close frame. */
const F_DISCARD = 2;
/** Call boundary() at the next frame boundary (a gateway frame is waiting). */
const F_WANT_BOUNDARY = 4;
/** A frame was refused; further input is ignored. */
const F_FAILED = 8;
/** The gateway's ping waits for the next boundary of this direction's output. */
const F_PENDING_PING = 16;
/** A close frame went to the output: nothing more may follow it. */
const F_CLOSE_SENT = 32;
/** The input peer sent its close frame. */
const F_CLOSE_SEEN = 64;
/** permessage-deflate was negotiated: RSV1 is allowed on a message's first frame. */
const F_COMPRESSION = 128;
/** Backend → client only: the backend refused the upgrade; its answer is passed through as bytes. */
const F_RAW = 1024;

/**
 * One proxied WebSocket: a client socket anchored to a backend socket. Until
 * it opens, the handshake's sockets report to it (relay.ts); then it relays
 * over two legs (stream-leg.ts). Both relay directions and the heartbeat
 * state are plain fields of this one object: `u*` is the client → backend
 * direction, `d*` backend → client.
 */
class WsConnection extends Relay implements WheelEntry<WsConnection> {
  // Its place among the proxy's open connections (a DeadlineWheel), once the handshake is done.
  wheelAt = -1;
  wheelSlot = -1;
  wheelPrev: WsConnection | undefined = undefined;
  wheelNext: WsConnection | undefined = undefined;
  readonly proxy: WebSocketProxy;
  /** Only while the handshake runs. */
  hs: Handshake | undefined;
  phase = HANDSHAKE;
  // Relay state per direction: flags, payload bytes of the current data frame
  // still to come, bytes of the current message, a close code waiting for the
  // next boundary (0: none), bytes of an incomplete header (rare).
  uF = 0;
  uRem = 0;
  uMsg = 0;
  uClose = 0;
  uCarry: Buffer | undefined = undefined;
  dF = 0;
  dRem = 0;
  dMsg = 0;
  dClose = 0;
  dCarry: Buffer | undefined = undefined;
  // Heartbeats (integer ms), per peer: outstanding ping time (-1: none), last
  // proof of life the checks have taken in, and the last read (stamped with
  // the proxy's `heardAt`).
  clientPingAt = -1;
  backendPingAt = -1;
  clientOkAt: number;
  backendOkAt: number;
  clientHeardAt = -1;
  backendHeardAt = -1;
  /** Open: when max age is reached (0: never). Closing: when the close started. */
  due = 0;

  constructor(proxy: WebSocketProxy, hs: Handshake) {
    const openedAt = Math.floor(proxy.ctx.clock.now());
    super(hs.client, openedAt);
    this.proxy = proxy;
    this.hs = hs;
    this.clientOkAt = this.backendOkAt = openedAt;
  }

  start(): void {
    const hs = this.hs!;
    const proxy = this.proxy;
    const ctx = proxy.ctx;
    const req = hs.req;
    const client = hs.client;
    const pickCtx = new SocketPickContext(client, this.openedAt, {
      clientIp: hs.ip,
      host: one(req.headers.host),
      path: req.url,
      headers: req.headers,
    });
    const backend = ctx.cluster.pickConnection(pickCtx, hs.tried);
    if (backend === undefined) {
      const reason = hs.tried === undefined ? 'no-backend' : 'connect-failed';
      proxy.refuse(reason);
      ctx.log.warn({ service: ctx.cluster.name, client: hs.ip, reason }, 'WebSocket upgrade refused');
      this.#endHandshake();
      reject(
        client,
        reason === 'no-backend' ? 503 : 502,
        reason === 'no-backend' ? 'no backend can take the connection' : 'no backend could be reached',
        proxyError(reason),
      );
      return;
    }
    this.place(ctx.cluster, backend, pickCtx);
    const s = proxy.settings;
    const up = connectBackend(backend, s, client, this);
    this.up = up;
    // One timer covers connect and handshake.
    hs.timer?.cancel();
    hs.timer = ctx.clock.setTimer(
      () => this.connectFailed(up, 'backend did not complete the WebSocket handshake in time'),
      s.connectTimeoutMs,
    );
  }

  #endHandshake(): void {
    const hs = this.hs;
    if (hs === undefined) return;
    hs.timer?.cancel();
    this.hs = undefined;
  }

  /**
   * The backend leg `up` failed before the connection opened (refused, closed,
   * no valid answer in time: a frozen backend still accepts): try another
   * backend, or answer the client.
   */
  connectFailed(up: Leg, why: string): void {
    const hs = this.hs;
    if (hs === undefined || up !== this.up) return;
    const backend = this.backend!;
    const ctx = this.proxy.ctx;
    backend.connectFailures++;
    ctx.cluster.unregister(backend, this);
    // Passive outlier detection counts it, as the TCP proxy's connect failures.
    ctx.cluster.reportFailure(backend, 'connect');
    up.destroy();
    this.up = undefined;
    this.backend = undefined;
    this.held = undefined;
    ctx.log.warn({ service: ctx.cluster.name, backend: backend.key, err: why }, 'backend connect failed');
    if (this.phase !== HANDSHAKE || hs.client.destroyed) return;
    hs.got = undefined;
    (hs.tried ??= new Set()).add(backend);
    if (hs.tried.size >= this.proxy.settings.maxAttempts) {
      this.proxy.refuse('connect-failed');
      this.#endHandshake();
      reject(hs.client, 502, 'no backend could be reached', proxyError('connect-failed'));
      return;
    }
    this.start();
  }

  /** The backend leg connected: send the handshake and read the answer. */
  legConnect(up: Leg): void {
    const hs = this.hs;
    if (hs === undefined || up !== this.up) return;
    if (hs.client.destroyed) {
      this.#fail();
      return;
    }
    // The handshake as the client sent it, plus who the client is.
    const req = hs.req;
    const ip = hs.ip ?? '';
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
    const host = one(req.headers.host);
    const proto = (hs.client as Socket & { encrypted?: boolean }).encrypted === true ? 'https' : 'http';
    const me = `for=${forwardedFor(ip)}${host !== undefined ? `;host="${host}"` : ''};proto=${proto}`;
    head += `X-Forwarded-For: ${xff === undefined ? ip : `${xff}, ${ip}`}\r\n`;
    head += `Forwarded: ${fwd === undefined ? me : `${fwd}, ${me}`}\r\n`;
    if (req.headers['x-forwarded-proto'] === undefined) head += `X-Forwarded-Proto: ${proto}\r\n`;
    // `up` reads already, from its connect on: the backend's answer comes to legRead.
    up.write(Buffer.from(`${head}\r\n`, 'latin1'));
  }

  /** Bytes of the backend's response head; at its end the connection opens (or fails). */
  handshakeData(upstream: Leg, chunk: Buffer): void {
    const hs = this.hs;
    if (hs === undefined || upstream !== this.up) return;
    const got = hs.got === undefined ? chunk : Buffer.concat([hs.got, chunk]);
    const end = got.indexOf('\r\n\r\n');
    if (end < 0) {
      hs.got = got;
      if (got.length > MAX_RESPONSE_HEAD) {
        upstream.pause();
        this.#badBackend('the backend sent an oversized handshake response');
      }
      return;
    }
    hs.got = undefined;
    upstream.pause();
    this.#onResponse(hs, upstream, got.subarray(0, end + 4), got.subarray(end + 4));
  }

  #badBackend(why: string): void {
    const ctx = this.proxy.ctx;
    this.proxy.count('ws-backend-handshake');
    ctx.log.warn(
      { service: ctx.cluster.name, backend: this.backend?.key, reason: why },
      'WebSocket handshake failed',
    );
    reject(this.hs!.client, 502, why, proxyError('bad-response'));
    this.#fail();
  }

  /**
   * The handshake is over: both sockets become legs of this connection
   * (stream-leg.ts), both paused.
   */
  #openLegs(hs: Handshake): Leg {
    this.#endHandshake();
    return this.takeClient(hs.client);
  }

  #onResponse(hs: Handshake, up: Leg, head: Buffer, rest: Buffer): void {
    const text = head.toString('latin1');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(text);
    if (status === null) {
      this.#badBackend('the backend answered the WebSocket handshake with something other than HTTP/1.1');
      return;
    }
    // Passive outlier detection counts the answer as the HTTP plane counts
    // a response: 5xx towards consecutive5xx, anything else as a success
    // (which also ends a run of connect failures).
    if (status[1]!.charCodeAt(0) === 53 /* '5' */)
      this.proxy.ctx.cluster.reportFailure(this.backend!, 'http-5xx');
    else this.proxy.ctx.cluster.reportSuccess(this.backend!);
    if (status[1] !== '101') {
      // The backend refused the upgrade (401, 403, 404…): the client gets its answer as is.
      const down = this.#openLegs(hs);
      down.write(head);
      if (rest.length > 0) down.write(rest);
      // The rest of the answer, byte for byte (legRead), then the backend's FIN.
      this.dF |= F_RAW;
      up.resume();
      down.resume();
      this.phase = CLOSING;
      this.due = Math.floor(this.proxy.ctx.clock.now());
      return;
    }
    const lines = text.split('\r\n');
    const header = (name: string): string | undefined => {
      const line = lines.find((l) => l.toLowerCase().startsWith(`${name}:`));
      return line?.slice(name.length + 1).trim();
    };
    const accept = createHash('sha1')
      .update(hs.key + GUID)
      .digest('base64');
    if (header('upgrade')?.toLowerCase() !== 'websocket' || header('sec-websocket-accept') !== accept) {
      this.#badBackend('the backend answered 101 without a valid WebSocket accept');
      return;
    }
    const compression =
      header('sec-websocket-extensions')?.toLowerCase().includes('permessage-deflate') === true;
    const proxy = this.proxy;
    const s = proxy.settings;
    const early = hs.head;
    const down = this.#openLegs(hs);
    this.phase = OPEN;
    if (compression) {
      this.uF |= F_COMPRESSION;
      this.dF |= F_COMPRESSION;
    }
    if (s.maxAgeMs !== undefined)
      this.due = Math.floor(this.openedAt + s.maxAgeMs * (0.9 + 0.2 * Math.random()));
    this.clientOkAt = this.backendOkAt = Math.floor(proxy.ctx.clock.now());
    down.write(head);
    proxy.opened(this);
    // Bytes that came with the heads: they are copies, not views of a read buffer.
    if (rest.length > 0) this.backendHeardAt = proxy.heardAt;
    if (rest.length === 0 || this.push(false, rest)) up.resume();
    if (early !== undefined) this.clientHeardAt = proxy.heardAt;
    if (early === undefined || this.push(true, early)) down.resume();
  }

  // ---- the legs' events (LegOwner) ----

  legRead(leg: Leg, n: number, buf: Buffer): void {
    let ok: boolean;
    if (this.phase === HANDSHAKE) {
      // The backend's answer (its head may span reads: a copy).
      this.handshakeData(leg, Buffer.from(buf.subarray(0, n)));
      afterRead(buf, n, false);
      return;
    }
    if (leg === this.down) {
      this.clientHeardAt = this.proxy.heardAt;
      ok = this.push(true, ownBytes(buf, 0, n));
    } else if ((this.dF & F_RAW) !== 0) {
      ok = this.down!.write(ownBytes(buf, 0, n));
    } else {
      this.backendHeardAt = this.proxy.heardAt;
      ok = this.push(false, ownBytes(buf, 0, n));
    }
    // Backpressure: this leg pauses until the other drains (legDrain).
    if (!ok) leg.pause();
    afterRead(buf, n, !ok);
  }

  legClose(leg: Leg, error: boolean): void {
    // A lean client leg took its socket out of the accept path's hands: the
    // service's connection count is told here instead.
    if (leg === this.down && leg.lean) this.proxy.ctx.connectionClosed();
    if (this.phase === HANDSHAKE) {
      this.connectFailed(
        leg,
        leg.failure ?? 'the backend closed the connection during the WebSocket handshake',
      );
      return;
    }
    const down = this.down;
    const up = this.up;
    // (A backend leg given up on during the handshake may report its close late.)
    if (down === undefined || up === undefined || (leg !== down && leg !== up)) return;
    // A backend that cuts an open WebSocket (a reset, a failed read or write)
    // counts towards outlier detection, as the TCP proxy counts resets. Only
    // while open: once a close has started, a reset is a sloppy ending of a
    // connection that was over anyway (a backend that closes its socket while
    // the client's last frames are still on their way gets them as a reset).
    if (error && leg === up && this.phase === OPEN && this.backend !== undefined)
      this.proxy.ctx.cluster.reportFailure(this.backend, 'reset');
    if (error && !(this.phase === OPEN && this.#peerLost(leg === up, true))) {
      down.destroy();
      up.destroy();
    }
    if (down.destroyed && up.destroyed) this.#finish();
  }

  /** A FIN from a peer of an open connection that sent no close frame: the other is told in close terms. */
  override legEnd(leg: Leg): void {
    if (
      this.phase === OPEN &&
      (leg === this.up || leg === this.down) &&
      this.#peerLost(leg === this.up, false)
    )
      return;
    super.legEnd(leg);
  }

  /**
   * One peer of an open connection vanished without a close frame (a reset,
   * or a FIN): the other is told in protocol terms, as a proxy should — a
   * client gets 1014 (bad gateway), a backend 1001 (going away), each with a
   * short reason instead of a dropped connection (1006 to it) — and its close
   * answer ends it, or the close timeout does.
   *
   * Only at a frame boundary of the survivor's direction. The relay parses
   * frame headers but passes a data frame's payload through as it arrives,
   * so while part of a frame has gone out, the survivor's parser expects the
   * rest of that payload, which will never come, and a close frame now would
   * be read as payload. Then this returns false and the survivor's
   * connection is cut (reset) or ended (FIN) as before. (An incomplete
   * header held back in the carry has not gone out: that is a boundary.)
   */
  #peerLost(backendLost: boolean, reset: boolean): boolean {
    // The survivor's direction: backend lost → backend → client (d*), else client → backend (u*).
    const survivor = backendLost ? this.down! : this.up!;
    if ((backendLost ? this.dRem : this.uRem) !== 0 || survivor.writableEnded) return false;
    const lost = backendLost ? this.up! : this.down!;
    this.phase = CLOSING;
    this.due = Math.floor(this.proxy.ctx.clock.now());
    this.proxy.recheck(this);
    // Both directions are done with the lost peer: nothing more is relayed
    // or injected either way, but the survivor's input is still parsed (its
    // carry kept), to find its close answer (#closeFrameFrom then ends its
    // socket). The lost peer's half-read header will never be completed.
    if (backendLost) this.dCarry = undefined;
    else this.uCarry = undefined;
    this.uF |= F_CLOSE_SENT | F_DISCARD;
    this.dF |= F_CLOSE_SENT | F_DISCARD;
    survivor.write(
      backendLost
        ? closeFrame(
            CLOSE_BAD_GATEWAY,
            false,
            reset ? 'backend connection reset' : 'backend closed the connection',
          )
        : closeFrame(
            CLOSE_GOING_AWAY,
            true,
            reset ? 'client connection reset' : 'client closed the connection',
          ),
    );
    // A FIN is answered with ours; a reset leg has closed already.
    if (!reset) lost.end();
    return true;
  }

  /** Relayed once the connection opens, with the bytes that came with the upgrade request. */
  early(bytes: Buffer): void {
    const hs = this.hs;
    if (hs === undefined) return;
    hs.head = hs.head === undefined ? bytes : Buffer.concat([hs.head, bytes]);
  }

  /** The client's socket closed before the connection opened. */
  clientGone(): void {
    if (this.phase === HANDSHAKE) this.#fail();
  }

  /** Give up on a connection that never opened: free the backend slot and both sockets. */
  #fail(): void {
    const hs = this.hs;
    this.#endHandshake();
    this.up?.destroy();
    if (hs !== undefined && !hs.client.writableEnded) hs.client.destroy();
    this.#finish();
  }

  #finish(): void {
    if (this.phase === CLOSED) return;
    this.phase = CLOSED;
    this.uCarry = this.dCarry = undefined;
    this.unregister(this.proxy.ctx.cluster);
    this.proxy.closed(this);
  }

  // ---- relay: a state machine over frame headers, per direction ----

  /**
   * Feed one received chunk of direction `up` (client → backend) or down.
   * Forwards views of the input (`subarray`, no copy), cut only around
   * frames the gateway consumes or refuses. Returns false if the output asked to pause.
   */
  push(up: boolean, input: Buffer): boolean {
    if (((up ? this.uF : this.dF) & F_FAILED) !== 0) return true;
    let chunk = input;
    const carry = up ? this.uCarry : this.dCarry;
    if (carry !== undefined) {
      chunk = Buffer.concat([carry, input]);
      if (up) this.uCarry = undefined;
      else this.dCarry = undefined;
    }
    const len = chunk.length;
    let ok = true;
    let pos = 0;
    let seg = 0; // start of bytes not yet forwarded
    const rem = up ? this.uRem : this.dRem;
    if (rem > 0) {
      const take = rem < len ? rem : len;
      pos = take;
      if (up) this.uRem = rem - take;
      else this.dRem = rem - take;
      const flags = up ? this.uF : this.dF;
      if (rem > take) return (flags & F_DISCARD) !== 0 ? true : this.#forward(up, chunk);
      if ((flags & F_WANT_BOUNDARY) !== 0) {
        if ((flags & F_DISCARD) === 0) ok = this.#forward(up, chunk.subarray(0, pos)) && ok;
        seg = pos;
        this.#boundary(up);
      }
    }
    while (pos < len) {
      if (len - pos < 2) break;
      const b0 = chunk[pos]!;
      const b1 = chunk[pos + 1]!;
      let plen = b1 & 0x7f;
      let hlen = 2;
      if (plen === 126) {
        hlen = 4;
        if (len - pos < 4) break;
        plen = chunk.readUInt16BE(pos + 2);
      } else if (plen === 127) {
        hlen = 10;
        if (len - pos < 10) break;
        const hi = chunk.readUInt32BE(pos + 2);
        // Beyond 2^53 cannot be represented; anything that large is over every limit anyway.
        plen = hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + chunk.readUInt32BE(pos + 6);
      }
      const masked = (b1 & 0x80) !== 0;
      if (masked) hlen += 4;
      if (len - pos < hlen) break;
      const opcode = b0 & 0x0f;
      const discard = ((up ? this.uF : this.dF) & F_DISCARD) !== 0;
      if (!discard) {
        const err = this.#check(up, b0, opcode, masked, plen);
        if (err !== undefined) {
          if (pos > seg) ok = this.#forward(up, chunk.subarray(seg, pos)) && ok;
          this.#refuse(up, err);
          return ok;
        }
      }
      if (opcode >= 0x8) {
        // Control frame: look at it whole (≤ 125 bytes of payload).
        const end = pos + hlen + plen;
        if (end > len) break;
        if (opcode === OP_PONG && plen === TOKEN.length && isOwnPong(chunk, pos + hlen, masked)) {
          // The answer to the gateway's own ping: consumed.
          if (!discard && pos > seg) ok = this.#forward(up, chunk.subarray(seg, pos)) && ok;
          seg = end;
          pos = end;
        } else if (opcode === OP_CLOSE) {
          if (!discard) {
            const err = checkClose(chunk, pos + hlen, plen, masked);
            if (err !== undefined) {
              if (pos > seg) ok = this.#forward(up, chunk.subarray(seg, pos)) && ok;
              this.#refuse(up, err);
              return ok;
            }
            ok = this.#forward(up, chunk.subarray(seg, end)) && ok;
          }
          seg = end;
          pos = end;
          this.#closeFrameFrom(up);
        } else {
          pos = end;
        }
      } else {
        pos += hlen;
        const avail = len - pos;
        if (avail < plen) {
          pos = len;
          if (up) this.uRem = plen - avail;
          else this.dRem = plen - avail;
          break;
        }
        pos += plen;
      }
      const flags = up ? this.uF : this.dF;
      if ((flags & F_WANT_BOUNDARY) !== 0) {
        if ((flags & F_DISCARD) === 0 && pos > seg) ok = this.#forward(up, chunk.subarray(seg, pos)) && ok;
        seg = pos;
        this.#boundary(up);
      }
      if (((up ? this.uF : this.dF) & F_FAILED) !== 0) return ok;
    }
    const discard = ((up ? this.uF : this.dF) & F_DISCARD) !== 0;
    if ((up ? this.uRem : this.dRem) === 0 && pos < len) {
      // An incomplete header or control frame: keep its bytes for the next chunk.
      const rest = Buffer.from(chunk.subarray(pos));
      if (up) this.uCarry = rest;
      else this.dCarry = rest;
      if (!discard && pos > seg) ok = this.#forward(up, chunk.subarray(seg, pos)) && ok;
      return ok;
    }
    if (!discard && seg < len) ok = this.#forward(up, seg === 0 ? chunk : chunk.subarray(seg)) && ok;
    return ok;
  }

  /** Relay bytes to the direction's output. */
  #forward(up: boolean, bytes: Buffer): boolean {
    // False: queued; the input pauses until the output drains (legDrain).
    return (up ? this.up! : this.down!).write(bytes);
  }

  #check(up: boolean, b0: number, opcode: number, masked: boolean, plen: number): FrameError | undefined {
    if (masked !== up) return up ? 'ws-unmasked-client-frame' : 'ws-masked-server-frame';
    const rsv = b0 & 0x70;
    const fin = (b0 & 0x80) !== 0;
    if (opcode >= 0x8) {
      if (opcode > OP_PONG) return 'ws-reserved-opcode';
      if (rsv !== 0) return 'ws-reserved-bits';
      if (plen > 125) return 'ws-control-frame-too-large';
      if (!fin) return 'ws-fragmented-control-frame';
      return undefined;
    }
    const flags = up ? this.uF : this.dF;
    if (opcode > OP_BINARY) return 'ws-reserved-opcode';
    if (rsv !== 0 && !(rsv === 0x40 && (flags & F_COMPRESSION) !== 0 && opcode !== OP_CONTINUATION))
      return 'ws-reserved-bits';
    const inMessage = (flags & F_IN_MESSAGE) !== 0;
    let msg = up ? this.uMsg : this.dMsg;
    if (opcode === OP_CONTINUATION) {
      if (!inMessage) return 'ws-unexpected-continuation';
    } else if (inMessage) {
      return 'ws-expected-continuation';
    } else {
      msg = 0;
    }
    const s = this.proxy.settings;
    if (plen > s.maxFrameSize) return 'ws-frame-too-large';
    msg += plen;
    if (up) this.uMsg = msg;
    else this.dMsg = msg;
    if (msg > s.maxMessageSize) return 'ws-message-too-large';
    const next = fin ? flags & ~F_IN_MESSAGE : flags | F_IN_MESSAGE;
    if (up) this.uF = next;
    else this.dF = next;
    return undefined;
  }

  /** At a frame boundary of the direction's output: write the gateway frames waiting for it. */
  #boundary(up: boolean): void {
    if (up) this.uF &= ~F_WANT_BOUNDARY;
    else this.dF &= ~F_WANT_BOUNDARY;
    this.#flush(up);
  }

  #flush(up: boolean): void {
    const out = up ? this.up! : this.down!;
    let flags = up ? this.uF : this.dF;
    if ((flags & F_CLOSE_SENT) !== 0 || out.writableEnded) {
      flags &= ~F_PENDING_PING;
    } else {
      if ((flags & F_PENDING_PING) !== 0) {
        flags &= ~F_PENDING_PING;
        out.write(up ? PING_TO_BACKEND : PING_TO_CLIENT);
      }
      const code = up ? this.uClose : this.dClose;
      if (code !== 0) {
        out.write(closeFrame(code, up));
        if (up) this.uClose = 0;
        else this.dClose = 0;
        flags |= F_CLOSE_SENT | F_DISCARD;
      }
    }
    if (up) this.uF = flags;
    else this.dF = flags;
  }

  /** Queue a gateway frame (ping: close = 0) for the direction's output; sent now when between frames. */
  #inject(up: boolean, close: number): void {
    if (close === 0) {
      if (up) this.uF |= F_PENDING_PING;
      else this.dF |= F_PENDING_PING;
    } else if ((up ? this.uClose : this.dClose) === 0) {
      if (up) this.uClose = close;
      else this.dClose = close;
    }
    if ((up ? this.uRem : this.dRem) === 0) this.#flush(up);
    else if (up) this.uF |= F_WANT_BOUNDARY;
    else this.dF |= F_WANT_BOUNDARY;
  }

  /** A peer's close frame was read in direction `up`. */
  #closeFrameFrom(up: boolean): void {
    if (up) this.uF |= F_CLOSE_SEEN;
    else this.dF |= F_CLOSE_SEEN;
    if (this.phase === OPEN) {
      // A peer-initiated close passes through; no more gateway frames on that path.
      this.phase = CLOSING;
      this.due = Math.floor(this.proxy.ctx.clock.now());
      this.proxy.recheck(this);
      return;
    }
    // The gateway started the close: the peer answered; end its socket once our close went out.
    const input = up ? this.down! : this.up!;
    if (((up ? this.dF : this.uF) & F_CLOSE_SENT) !== 0) input.end();
  }

  /** The input peer of direction `up` broke the protocol or a limit. */
  #refuse(up: boolean, reason: FrameError): void {
    if (up) this.uF |= F_FAILED;
    else this.dF |= F_FAILED;
    const proxy = this.proxy;
    proxy.count(reason);
    proxy.ctx.log.debug(
      {
        service: proxy.ctx.cluster.name,
        backend: this.backend?.key,
        from: up ? 'client' : 'backend',
        reason,
      },
      'WebSocket frame refused',
    );
    // The offender gets the code for what it did; the other peer hears that its partner is gone.
    this.#startClosing(
      up ? closeCodeFor(reason) : CLOSE_INTERNAL_ERROR,
      up ? CLOSE_GOING_AWAY : closeCodeFor(reason),
    );
    // The offending peer is failed: its socket is ended right after our close frame.
    const input = up ? this.down! : this.up!;
    if (((up ? this.dF : this.uF) & F_CLOSE_SENT) !== 0) input.end();
    else input.destroy();
  }

  /**
   * Gateway-initiated close: `clientCode` to the client, `backendCode` to the
   * backend, each at its next frame boundary; then each socket ends when its
   * peer answers, or both are destroyed after the close timeout.
   */
  #startClosing(clientCode: number, backendCode: number): void {
    if (this.phase !== OPEN && this.phase !== CLOSING) return;
    if (this.phase === OPEN) {
      this.phase = CLOSING;
      this.due = Math.floor(this.proxy.ctx.clock.now());
      this.proxy.recheck(this);
    }
    const sentOrSeen = F_CLOSE_SENT | F_CLOSE_SEEN;
    if ((this.dF & sentOrSeen) === 0) this.#inject(false, clientCode);
    if ((this.uF & sentOrSeen) === 0) this.#inject(true, backendCode);
    // A peer that already sent its close frame has nothing more to say; end it once our close is out.
    if ((this.uF & F_CLOSE_SEEN) !== 0 && (this.dF & F_CLOSE_SENT) !== 0) this.down!.end();
    if ((this.dF & F_CLOSE_SEEN) !== 0 && (this.uF & F_CLOSE_SENT) !== 0) this.up!.end();
  }

  /**
   * Heartbeats, max age and close timeouts (integer ms); called by the
   * proxy's tick when the connection's next check (`nextCheck`) is due.
   */
  check(now: number, s: WebSocketSettings): void {
    const phase = this.phase;
    if (phase !== OPEN) {
      if (phase === CLOSING && now - this.due >= s.closeTimeoutMs) this.destroy();
      return;
    }
    if (this.due !== 0 && now >= this.due) {
      this.leave('max-age');
      return;
    }
    const interval = s.pingIntervalMs;
    if (interval === undefined) return;
    // Client leg: data from the client is its sign of life; pings go out in the down direction.
    if (this.clientHeardAt > this.clientOkAt) {
      this.clientPingAt = -1;
      this.clientOkAt = this.clientHeardAt;
    }
    if (this.clientPingAt >= 0) {
      if (now - this.clientPingAt >= s.pingTimeoutMs) {
        this.#legDead(true);
        return;
      }
    } else if (now - this.clientOkAt >= interval) {
      this.clientPingAt = now;
      this.#inject(false, 0);
    }
    // Backend leg.
    if (this.backendHeardAt > this.backendOkAt) {
      this.backendPingAt = -1;
      this.backendOkAt = this.backendHeardAt;
    }
    if (this.backendPingAt >= 0) {
      if (now - this.backendPingAt >= s.pingTimeoutMs) this.#legDead(false);
    } else if (now - this.backendOkAt >= interval) {
      this.backendPingAt = now;
      this.#inject(true, 0);
    }
  }

  /**
   * When `check` has something to do next (Infinity: nothing). A read does
   * not move it: data only postpones a ping, which the check finds out when
   * it comes (and then files the connection for later).
   */
  nextCheck(s: WebSocketSettings): number {
    if (this.phase === CLOSING) return this.due + s.closeTimeoutMs;
    if (this.phase !== OPEN) return Infinity;
    let at = this.due !== 0 ? this.due : Infinity;
    const interval = s.pingIntervalMs;
    if (interval === undefined) return at;
    const client = this.clientPingAt >= 0 ? this.clientPingAt + s.pingTimeoutMs : this.clientOkAt + interval;
    const backend =
      this.backendPingAt >= 0 ? this.backendPingAt + s.pingTimeoutMs : this.backendOkAt + interval;
    if (client < at) at = client;
    return backend < at ? backend : at;
  }

  /** A leg missed its pong: free the other side in protocol terms, drop the dead one. */
  #legDead(client: boolean): void {
    const proxy = this.proxy;
    proxy.count(client ? 'ws-client-heartbeat-timeout' : 'ws-backend-heartbeat-timeout');
    proxy.ctx.log.info(
      { service: proxy.ctx.cluster.name, backend: this.backend?.key, leg: client ? 'client' : 'backend' },
      'WebSocket peer missed its heartbeat; closing',
    );
    if (client) {
      this.down!.destroy();
      this.#startClosing(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY);
    } else {
      this.up!.destroy();
      this.#startClosing(CLOSE_INTERNAL_ERROR, CLOSE_GOING_AWAY);
      // The client's answer ends it; if the backend was frozen mid-frame, no close can be sent.
      if ((this.dF & F_CLOSE_SENT) === 0) this.down!.destroy();
    }
  }

  leave(reason: LeaveReason): void {
    if (this.phase === OPEN) {
      this.#startClosing(clientCodeFor(reason), CLOSE_GOING_AWAY);
    } else if (this.phase === HANDSHAKE && this.hs !== undefined) {
      reject(this.hs.client, 503, 'the backend is going away; retry', proxyError('shutting-down'));
      this.#fail();
    }
  }

  destroy(): void {
    if (this.phase === HANDSHAKE) {
      this.hs?.client.destroy();
      this.#fail();
      return;
    }
    this.down?.destroy();
    this.up?.destroy();
  }
}
