/**
 * What the TCP relay (tcp.ts) and the WebSocket relay (websocket.ts) share:
 * a client socket anchored to one backend, registered there from the pick
 * on, and once both sides are up, two relay legs (stream-leg.ts) reporting
 * to it. `Relay` keeps the legs and the backend, answers the leg events that
 * mean the same for both protocols, and keeps what the policy holds the
 * connection by; each protocol adds its own phases, reads and closing.
 */
import type { Socket } from 'node:net';
import type { PickContext } from '../balance/types.ts';
import type { Backend } from '../cluster/backend.ts';
import type { Clock } from '../cluster/clock.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { LeaveReason, ProxiedConnection } from '../cluster/connection.ts';
import type { LiveNode } from '../live-set.ts';
import { afterRead } from './socket-reads.ts';
import { type Leg, type LegOwner, takeOver } from './stream-leg.ts';

/**
 * What a policy's `affinity` reads of a pick context (src/balance/: the
 * client address for persistence and maglev's `source-ip`, the headers for
 * maglev's `header:` and `cookie:`), kept for the rebalancer's question:
 * would this client's next connection land on the same backend?
 */
interface Held extends PickContext {
  now: number;
  readonly clientIp: string | undefined;
  headers: PickContext['headers'];
}

/**
 * Until the relay opens, the client socket's listeners are module-level
 * functions that find their relay through this property, rather than
 * closures made per connection.
 */
const kRelay = Symbol('holdfast.relay');
interface ClientSocket extends Socket {
  [kRelay]: Relay;
}

function noop(): void {}

/**
 * The client's read callback until the relay opens (`readThrough(client,
 * readEarly)`): the client is paused meanwhile, and bytes that still arrive
 * (a paused net.Socket may read once more) wait in the relay.
 */
export function readEarly(this: Socket, n: number, buf: Buffer): void {
  (this as ClientSocket)[kRelay].early(Buffer.from(buf.subarray(0, n)));
  this.pause();
  afterRead(buf, n, false);
}

/** The client went away (or was turned away) before the relay opened. */
function onClientClose(this: ClientSocket): void {
  this[kRelay].clientGone();
}

/**
 * For a service's Rebalancer: whether a connection is held on `backend` by
 * the policy's affinity (persistence, a client-keyed hash). Such a connection
 * is never moved: its client would come straight back.
 */
export function relayHeld(
  cluster: Cluster,
  clock: Clock,
): (conn: ProxiedConnection, backend: Backend) => boolean {
  return (conn, backend) => {
    if (!(conn instanceof Relay)) return false;
    const held = conn.held;
    if (held === undefined) return false;
    held.now = clock.now();
    return cluster.affinity(held) === backend;
  };
}

/** One relayed connection: the client's leg `down`, the backend's `up`. */
export abstract class Relay implements ProxiedConnection, LegOwner {
  backendNode: LiveNode<ProxiedConnection> | undefined = undefined;
  readonly openedAt: number;
  /** The client's leg, once the relay opened; the backend's, from its connect on. */
  down: Leg | undefined = undefined;
  up: Leg | undefined = undefined;
  backend: Backend | undefined = undefined;
  /** What the policy holds this connection by, only if it holds it (see `place`). */
  held: Held | undefined = undefined;

  /** `client`: the accepted socket, reading through `readEarly` and paused. */
  constructor(client: Socket, openedAt: number) {
    this.openedAt = openedAt;
    (client as ClientSocket)[kRelay] = this;
    // A socket from the HTTP listener usually has one already; a second
    // would turn the listener slot into an array.
    if (client.listenerCount('error') === 0) client.on('error', noop);
    client.on('close', onClientClose);
  }

  /** Client bytes that arrived before the relay opened. */
  abstract early(bytes: Buffer): void;
  /** The client's socket closed before the relay opened. */
  abstract clientGone(): void;
  abstract legRead(leg: Leg, n: number, buf: Buffer): void;
  abstract legClose(leg: Leg, error: boolean): void;
  abstract leave(reason: LeaveReason): void;
  abstract destroy(): void;

  get bytesIn(): number {
    return this.up?.bytesRead ?? 0;
  }

  get bytesOut(): number {
    return this.up?.bytesWritten ?? 0;
  }

  /** The leg across from `leg`. */
  other(leg: Leg): Leg | undefined {
    return leg === this.down ? this.up : this.down;
  }

  /** Backpressure: the leg that paused because `leg` was full reads again. */
  legDrain(leg: Leg): void {
    this.other(leg)?.resume();
  }

  /** Half-close: a FIN from one peer becomes a FIN to the other, never a reset. */
  legEnd(leg: Leg): void {
    const other = this.other(leg);
    if (other !== undefined && !other.writableEnded) other.end();
  }

  /**
   * The pick chose `backend` with `ctx`: register there, and keep what the
   * policy holds this client by, if it holds it.
   */
  place(cluster: Cluster, backend: Backend, ctx: PickContext): void {
    this.backend = backend;
    cluster.register(backend, this, ctx);
    const bound = cluster.affinity(ctx);
    if (bound === undefined) {
      this.held = undefined;
      return;
    }
    const held: Held = { now: ctx.now, clientIp: ctx.clientIp, headers: undefined };
    // The header map stays with the connection only if the policy placed it by
    // one (maglev on a header or cookie): an open connection otherwise keeps
    // none of its request.
    if (ctx.headers !== undefined && cluster.affinity(held) !== bound) held.headers = ctx.headers;
    this.held = held;
  }

  /** The relay opens: the client's socket becomes the `down` leg (paused). */
  takeClient(client: Socket): Leg {
    client.off('close', onClientClose);
    const down = takeOver(client, this);
    this.down = down;
    return down;
  }

  /** The relay is over: its backend counts its bytes and lets it go. */
  unregister(cluster: Cluster): void {
    const backend = this.backend;
    if (backend === undefined) return;
    backend.bytesReceivedClosed += this.bytesIn;
    backend.bytesSentClosed += this.bytesOut;
    cluster.unregister(backend, this);
  }
}
