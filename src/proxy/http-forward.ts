/**
 * Per-request balancing: every HTTP/1.1 request and HTTP/2 stream picks its
 * own backend, is registered on it while open (so least-outstanding counts a
 * long gRPC stream for its whole life), and is retried on another backend
 * when that is safe and the retry budget allows.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { PickContext } from '../balance/types.ts';
import type { Backend } from '../cluster/backend.ts';
import type { Clock, Timer } from '../cluster/clock.ts';
import { type LiveNode, LiveSet } from '../live-set.ts';
import type { LeaveReason, ProxiedConnection } from '../cluster/connection.ts';
import type { ServiceConfig } from '../config/schema.ts';
import type { HttpContext } from './http.ts';
import { type ProxyFailure, UpstreamError } from './http-errors.ts';
import { type HeaderMap, isIdempotent, parseGrpcTimeout } from './http-headers.ts';
import { Http1Upstream } from './http1-upstream.ts';
import {
  Http2Upstream,
  type RawResponseHead,
  type ResponseSink,
  type Upstream,
  type UpstreamCall,
  type UpstreamRequest,
  type UpstreamSettings,
} from './http-upstream.ts';

/**
 * One client request or stream, as HTTP/1.1 and HTTP/2 both present it. It is
 * also the request each attempt sends upstream (the same on every attempt).
 */
export interface Downstream extends UpstreamRequest {
  readonly method: string;
  readonly path: string;
  readonly authority: string | undefined;
  /** Headers to forward (hop-by-hop removed, forwarding headers appended). */
  readonly headers: HeaderMap;
  /** The request body, or undefined when there is none. */
  readonly body: Readable | undefined;
  readonly grpc: boolean;
  readonly pick: PickContext;
  /** The client went away. */
  readonly gone: boolean;
  respond(status: number, headers: IncomingHttpHeaders, endStream: boolean): void;
  /** Respond with a head an HTTP/1.1 backend sent, its field lines passed through as they came. */
  respondRaw(head: RawResponseHead, endStream: boolean): void;
  /**
   * Returns false when the client's buffer is full; `onDrain` fires once it
   * empties. `transient` (only where `takesViews`): the chunk is valid only
   * during the call, copy what is kept.
   */
  write(chunk: Buffer, transient?: boolean): boolean;
  /** True when `write` accepts transient chunks (copying only what it keeps). */
  readonly takesViews?: boolean;
  onDrain(fn: () => void): void;
  end(trailers: IncomingHttpHeaders | undefined): void;
  /** Answer with a proxy error (before response headers) or cut the response (after). */
  fail(kind: ProxyFailure): void;
  /** Cut the client's request now (drain deadline passed). */
  abort(): void;
  /** Ask the client to go after this response: GOAWAY or `Connection: close`. */
  leave(): void;
  /**
   * `watcher.downstreamClosed` runs once when the client's request/stream is
   * closed: `complete` when the whole response was delivered, false when the
   * client went away first.
   */
  onClose(watcher: CloseWatcher): void;
  /**
   * Optional, for a downstream object that serves one request after another
   * (HTTP/1.1 keep-alive): true to keep the plane's state of its request in
   * `exchange`, reused for its next request once that one is finished.
   */
  readonly keepsExchange?: boolean;
  exchange?: object | undefined;
}

/** Told when a Downstream closes (an object rather than a closure: nothing allocated per request). */
export interface CloseWatcher {
  downstreamClosed(complete: boolean): void;
}

/** Settings read per request; rebuilt on reload. */
export interface PlaneSettings {
  retries: number;
  budgetRatio: number;
  budgetMin: number;
  requestTimeoutMs: number;
  upstream: UpstreamSettings & { protocol: 'http1' | 'http2' };
}

export function planeSettings(config: ServiceConfig): PlaneSettings {
  return {
    retries: config.retries,
    budgetRatio: config.retryBudget.ratio,
    budgetMin: config.retryBudget.min,
    requestTimeoutMs: config.httpTimeouts.request,
    upstream: {
      protocol: config.upstream.protocol,
      connectTimeoutMs: config.timeouts.connect,
      connectionsPerBackend: config.upstream.connectionsPerBackend,
      sessionsPerBackend: config.upstream.sessionsPerBackend,
      sourceAddresses: config.sourceAddresses,
      keepAliveMs: config.tcpKeepAlive === 'off' ? undefined : config.tcpKeepAlive,
      ping: {
        intervalMs: config.http2.ping.interval,
        timeoutMs: config.http2.ping.timeout,
        jitter: config.http2.ping.jitter,
      },
    },
  };
}

const SWEEP_MS = 2_000;

/**
 * Request timeouts without a timer per request: every request of a plane
 * waits the same time, so deadlines come in the order requests start. The
 * waiting requests form a list in that order, and one timer waits for the
 * first of them.
 */
class Deadlines {
  readonly ms: number;
  readonly #clock: Clock;
  /** Oldest first: the first one's deadline comes first. */
  readonly #waiting = new LiveSet<Exchange>();
  #timer: Timer | undefined;

  constructor(clock: Clock, ms: number) {
    this.#clock = clock;
    this.ms = ms;
  }

  get empty(): boolean {
    return this.#waiting.size === 0;
  }

  add(x: Exchange): void {
    // Read from the exchange rather than passed in: a time passed to a call
    // that V8 does not inline is boxed into a new heap number on every request.
    x.deadlineAt = x.openedAt + this.ms;
    // An exchange serving a keep-alive connection's next request comes back with its node.
    if (x.deadlineNode === undefined) x.deadlineNode = this.#waiting.add(x);
    else this.#waiting.attach(x.deadlineNode);
    if (this.#timer === undefined) this.#arm(this.ms);
  }

  #arm(ms: number): void {
    this.#timer = this.#clock.setTimer(this.#fire, ms);
  }

  /** Time out the requests whose deadline has come, then wait for the next one. */
  readonly #fire = (): void => {
    this.#timer = undefined;
    const now = this.#clock.now();
    const waiting = this.#waiting;
    for (let x = waiting.first; x !== undefined && x.deadlineAt <= now; x = waiting.first) {
      waiting.delete(x.deadlineNode!);
      x.timedOut();
    }
    const next = waiting.first;
    if (next !== undefined) this.#arm(next.deadlineAt - now);
  };

  close(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
  }
}

/**
 * The request-level data plane of one service, shared by its HTTP/1.1 and
 * HTTP/2 listeners: upstream pools, retry budget and counters.
 */
export class HttpPlane {
  readonly ctx: HttpContext;
  settings: PlaneSettings;
  upstream: Upstream;
  /** Requests in flight, and retries among them (for the budget). */
  live = 0;
  retrying = 0;
  #sweep: Timer | undefined;
  #closed = false;
  /** Requests waiting for their response head, for `requestTimeoutMs`. */
  #deadlines: Deadlines | undefined;

  /** Start the request timeout of `x` (`httpTimeouts.request`), counted from when it opened. */
  startDeadline(x: Exchange): void {
    const ms = this.settings.requestTimeoutMs;
    if (ms <= 0) return;
    let d = this.#deadlines;
    if (d === undefined || d.ms !== ms) {
      // Changed by a reload: requests already waiting keep their list (and its timer).
      this.#deadlines = d = new Deadlines(this.ctx.clock, ms);
    }
    d.add(x);
  }

  constructor(ctx: HttpContext) {
    this.ctx = ctx;
    this.settings = planeSettings(ctx.config);
    this.upstream = this.#makeUpstream();
    this.#scheduleSweep();
  }

  #makeUpstream(): Upstream {
    const u = this.settings.upstream;
    return u.protocol === 'http2' ? new Http2Upstream(u, this.ctx.clock, this.ctx.log) : new Http1Upstream(u);
  }

  configure(config: ServiceConfig): void {
    const before = JSON.stringify(this.settings.upstream);
    this.settings = planeSettings(config);
    if (JSON.stringify(this.settings.upstream) !== before) {
      const old = this.upstream;
      this.upstream = this.#makeUpstream();
      void old.close();
    }
  }

  /** Close pools of backends the cluster has forgotten (their requests are done). */
  #scheduleSweep(): void {
    this.#sweep = this.ctx.clock.setTimer(() => {
      if (this.#closed) return;
      this.upstream.sweep(new Set(this.ctx.cluster.backends.values()));
      this.#scheduleSweep();
    }, SWEEP_MS);
  }

  /** Count a failure in the service's error counters. */
  count(kind: string): void {
    const errors = (this.ctx.stats.errors ??= {});
    errors[kind] = (errors[kind] ?? 0) + 1;
  }

  /** May one more retry start now? Retries in flight stay under a share of live requests. */
  allowRetry(): boolean {
    const s = this.settings;
    return this.retrying < Math.max(s.budgetMin, s.budgetRatio * this.live);
  }

  forward(down: Downstream): void {
    const last = down.exchange;
    if (last instanceof Exchange && last.reusableFor(this, down)) {
      last.restart();
      return;
    }
    const x = new Exchange(this, down);
    if (down.keepsExchange === true) down.exchange = x;
    x.start();
  }

  /** Shutdown: once the last request is done, close the upstream pools. */
  drain(): void {
    if (this.#closed) return;
    const check = (): void => {
      if (this.live === 0) void this.close();
      else this.ctx.clock.setTimer(check, 50);
    };
    check();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#sweep?.cancel();
    if (this.#deadlines?.empty === true) this.#deadlines.close();
    await this.upstream.close();
  }
}

/** One request through the proxy, across its attempts. Registered on the backend of the current attempt. */
class Exchange implements ProxiedConnection, ResponseSink, CloseWatcher {
  backendNode: LiveNode<ProxiedConnection> | undefined = undefined;
  readonly #plane: HttpPlane;
  readonly #down: Downstream;
  // The state below is (re)set by #reset for each request this object serves.
  /**
   * The times start as 0 rather than declared without a value: a field that
   * starts undefined may hold anything, so V8 boxes every time stored in it
   * into a new 16-byte heap number (one per request each); a field that
   * starts as a number keeps its double in place.
   */
  openedAt = 0;
  #backend: Backend | undefined;
  #tried: Set<Backend> | undefined;
  #call: UpstreamCall | undefined;
  #attempts!: number;
  #isRetry!: boolean;
  #hasResponse!: boolean;
  /** The backend's response is complete; waiting for the client to have it all. */
  #ended!: boolean;
  #finished!: boolean;
  /** The request timeout (see Deadlines): when, and the list this request waits in. */
  deadlineAt = 0;
  /** Its place in the plane's Deadlines while it waits for a response head (kept for the next request). */
  deadlineNode: LiveNode<Exchange> | undefined = undefined;
  #deadline: Timer | undefined;
  #lastFailure: ProxyFailure | undefined;

  constructor(plane: HttpPlane, down: Downstream) {
    this.#plane = plane;
    this.#down = down;
    this.#reset();
  }

  /**
   * May serve `down`'s next request: finished (nothing answers through it;
   * unregistered, out of the deadline list, its call ended or aborted).
   */
  reusableFor(plane: HttpPlane, down: Downstream): boolean {
    return this.#finished && this.#plane === plane && this.#down === down;
  }

  /** Serve the downstream's next request (see `reusableFor`). */
  restart(): void {
    // The last request's call: its upstream may use it again (if it is over).
    const spare = this.#call;
    this.#reset();
    this.start(spare);
  }

  /** Out of the request-timeout list (the response head came, or the request ended). */
  #leaveDeadlines(): void {
    const node = this.deadlineNode;
    if (node !== undefined) node.set?.delete(node);
  }

  /** Every field starts over. */
  #reset(): void {
    this.openedAt = this.#plane.ctx.clock.now();
    this.#backend = undefined;
    this.#tried = undefined;
    this.#call = undefined;
    this.#attempts = 0;
    this.#isRetry = false;
    this.#hasResponse = false;
    this.#ended = false;
    this.#finished = false;
    this.deadlineAt = 0;
    this.#deadline = undefined;
    this.#lastFailure = undefined;
  }

  /** `spare`: the last request's call, which the upstream may use again for this one (see `restart`). */
  start(spare?: UpstreamCall): void {
    const plane = this.#plane;
    plane.live++;
    const down = this.#down;
    const clock = plane.ctx.clock;
    if (down.grpc) {
      const ms = parseGrpcTimeout(down.headers['grpc-timeout']);
      if (ms !== undefined) this.#deadline = clock.setTimer(() => this.#timeout('deadline-exceeded'), ms);
    }
    // The request stays registered until the client has the whole response (or left).
    down.onClose(this);
    this.#attempt(spare);
  }

  downstreamClosed(complete: boolean): void {
    if (this.#finished) return;
    if (!complete && !this.#ended) {
      this.#call?.abort();
      this.#plane.count('client-gone');
    }
    this.#finish();
  }

  /** Pick a backend and send the request there; `spare` only on the first attempt (see `start`). */
  #attempt(spare?: UpstreamCall): void {
    const plane = this.#plane;
    const down = this.#down;
    const cluster = plane.ctx.cluster;
    const pick = down.pick;
    // The first attempt starts when the exchange opened (one clock read a request).
    pick.now = this.#attempts === 0 ? this.openedAt : plane.ctx.clock.now();
    const backend = cluster.pick(pick, this.#tried);
    if (backend === undefined) {
      const last = this.#lastFailure;
      const kind: ProxyFailure =
        last === undefined ? 'no-backend' : this.#attempts > 1 ? 'retries-exhausted' : last;
      this.#fail(kind);
      return;
    }
    this.#attempts++;
    this.#backend = backend;
    cluster.register(backend, this);
    // The request timeout starts with the first attempt (when the exchange opened) and covers the retries.
    if (this.deadlineAt === 0) plane.startDeadline(this);
    // Upstreams only add to the request what is the same on every attempt.
    this.#call = plane.upstream.request(backend, down, this, spare);
  }

  onHeaders(status: number, headers: IncomingHttpHeaders, endStream: boolean): void {
    if (this.#finished) return;
    this.#responded(status);
    this.#down.respond(status, headers, endStream);
  }

  onRawHead(head: RawResponseHead, endStream: boolean): void {
    if (this.#finished) return;
    this.#responded(head.status);
    this.#down.respondRaw(head, endStream);
  }

  #responded(status: number): void {
    this.#hasResponse = true;
    // Passive outlier detection counts consecutive 5xx answers per backend.
    const backend = this.#backend;
    if (backend !== undefined) {
      if (status >= 500) this.#plane.ctx.cluster.reportFailure(backend, 'http-5xx');
      else this.#plane.ctx.cluster.reportSuccess(backend);
    }
    this.#leaveDeadlines();
  }

  onData(chunk: Buffer, transient = false): boolean {
    if (this.#finished) return true;
    const down = this.#down;
    const ok =
      !transient || down.takesViews === true ? down.write(chunk, transient) : down.write(Buffer.from(chunk));
    if (!ok) this.#down.onDrain(() => this.#call?.resume());
    return ok;
  }

  onEnd(trailers: IncomingHttpHeaders | undefined): void {
    if (this.#finished) return;
    this.#ended = true;
    this.#leaveDeadlines();
    this.#deadline?.cancel();
    this.#down.end(trailers);
  }

  onError(err: UpstreamError): void {
    if (this.#finished) return;
    const plane = this.#plane;
    const backend = this.#backend!;
    plane.ctx.cluster.unregister(backend, this);
    this.#backend = undefined;
    this.#call = undefined;
    if (err.kind === 'connect-failed') {
      backend.connectFailures++;
      plane.ctx.cluster.reportFailure(backend, 'connect');
    } else if (err.kind === 'upstream-reset') {
      plane.ctx.cluster.reportFailure(backend, 'reset');
    }
    plane.ctx.log.debug(
      { service: plane.ctx.cluster.name, backend: backend.key, err: err.message },
      'upstream request failed',
    );
    if (this.#hasResponse) {
      this.#fail(err.kind);
      return;
    }
    this.#lastFailure = err.kind;
    if (this.#canRetry(err)) {
      (this.#tried ??= new Set()).add(backend);
      if (!this.#isRetry) {
        this.#isRetry = true;
        plane.retrying++;
      }
      plane.count('retried');
      this.#attempt();
      return;
    }
    this.#fail(err.kind);
  }

  #canRetry(err: UpstreamError): boolean {
    const plane = this.#plane;
    const down = this.#down;
    if (this.#attempts > plane.settings.retries || down.gone) return false;
    // A body already read cannot be sent again.
    if (down.body !== undefined && (down.body.readableDidRead || down.body.destroyed)) return false;
    if (err.sent && !(isIdempotent(down.method) && down.body === undefined)) return false;
    return this.#isRetry || plane.allowRetry();
  }

  /** No response head within `httpTimeouts.request` (called by Deadlines). */
  timedOut(): void {
    this.#timeout('upstream-timeout');
  }

  #timeout(kind: ProxyFailure): void {
    if (this.#finished) return;
    this.#call?.abort();
    if (this.#backend !== undefined) this.#plane.ctx.cluster.unregister(this.#backend, this);
    this.#backend = undefined;
    this.#fail(kind);
  }

  #fail(kind: ProxyFailure): void {
    this.#plane.count(kind);
    if (this.#backend !== undefined) this.#plane.ctx.cluster.unregister(this.#backend, this);
    this.#backend = undefined;
    this.#ended = true;
    this.#leaveDeadlines();
    this.#deadline?.cancel();
    this.#down.fail(kind);
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#leaveDeadlines();
    this.#deadline?.cancel();
    const plane = this.#plane;
    plane.live--;
    if (this.#isRetry) plane.retrying--;
    if (this.#backend !== undefined) plane.ctx.cluster.unregister(this.#backend, this);
    this.#backend = undefined;
  }

  leave(_reason: LeaveReason): void {
    this.#down.leave();
  }

  destroy(): void {
    if (this.#finished) return;
    this.#call?.abort();
    this.#down.fail('shutting-down');
    this.#down.abort();
    this.#finish();
  }
}
