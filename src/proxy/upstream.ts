import type { Socket } from 'node:net';
import type { PickContext } from '../balance/types.ts';
import type { Backend } from '../cluster/backend.ts';
import type { ServiceConfig } from '../config/schema.ts';
import { socketAddresses, tlsServerName } from './socket-address.ts';
import { readsOwnBuffers } from './socket-reads.ts';
import { connectLeg, type Leg, type LegOwner } from './stream-leg.ts';
import { SourceAddressPool } from './source-address.ts';

/**
 * What every relayed connection (TCP, WebSocket) is opened with and held
 * to; read per new connection, replaced on reload.
 */
export interface RelaySettings {
  connectTimeoutMs: number;
  /** TCP keepalive idle time in ms on both legs, or undefined for off. */
  keepAliveMs: number | undefined;
  maxConnections: number | undefined;
  /** Local addresses to spread upstream connections over (empty: the kernel chooses). */
  sources: SourceAddressPool;
  /** Most backends tried for one client before giving up. */
  maxAttempts: number;
}

export function relaySettings(config: ServiceConfig): RelaySettings {
  return {
    connectTimeoutMs: config.timeouts.connect,
    keepAliveMs: config.tcpKeepAlive === 'off' ? undefined : config.tcpKeepAlive,
    maxConnections: config.limits.maxConnections,
    sources: new SourceAddressPool(config.sourceAddresses),
    maxAttempts: 3,
  };
}

/**
 * Open the gateway's leg to a backend for a relayed connection (stream-leg.ts):
 * the next source address round the list, half-close allowed (a FIN is
 * passed on, not turned into a close), Nagle off (the client's writes are
 * already segmented), TCP keepalive so a silent backend host is found. The
 * connect timeout is the caller's: it knows what else it waits for.
 *
 * `client`: the other leg's socket; where it is read plainly (TLS), so is
 * this leg (see socket-reads.ts).
 */
export function connectBackend(backend: Backend, s: RelaySettings, client: Socket, owner: LegOwner): Leg {
  const { host, port } = backend.address;
  return connectLeg(
    {
      host,
      port,
      localAddress: s.sources.next(host),
      keepAliveMs: s.keepAliveMs,
      ownBuffers: readsOwnBuffers(client),
    },
    owner,
  );
}

/**
 * The pick context of a relayed connection. Socket addresses are read only
 * when a policy asks (hash and persistence policies do; least-connections
 * does not): reading them makes Node keep an address object and strings on
 * the socket for its whole life.
 */
export class SocketPickContext implements PickContext {
  readonly now: number;
  readonly #socket: Socket;
  readonly #clientIp: string | undefined;
  readonly host: string | undefined;
  readonly path: string | undefined;
  readonly headers: PickContext['headers'];

  /** `http`: what a WebSocket upgrade adds (and the client address, where already known). */
  constructor(
    socket: Socket,
    now: number,
    http?: {
      clientIp: string | undefined;
      host: string | undefined;
      path: string | undefined;
      headers: PickContext['headers'];
    },
  ) {
    this.#socket = socket;
    this.now = now;
    this.#clientIp = http?.clientIp;
    this.host = http?.host;
    this.path = http?.path;
    this.headers = http?.headers;
  }
  /** Read once, from the handle (socket-address.ts): nothing is cached on the long-lived socket. */
  #addresses: ReturnType<typeof socketAddresses> | undefined;
  get #a(): ReturnType<typeof socketAddresses> {
    return (this.#addresses ??= socketAddresses(this.#socket));
  }
  get clientIp(): string | undefined {
    return this.#clientIp ?? this.#a.ip;
  }
  get clientPort(): number | undefined {
    return this.#a.port;
  }
  get localIp(): string | undefined {
    return this.#a.localIp;
  }
  get localPort(): number | undefined {
    return this.#a.localPort;
  }
  get sni(): string | undefined {
    return tlsServerName(this.#socket);
  }
}
