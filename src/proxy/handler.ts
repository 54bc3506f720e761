import type { Socket } from 'node:net';
import type { ServiceConfig } from '../config/schema.ts';

/** Counters every protocol keeps for `/metrics`. */
export interface ServiceStats {
  accepted: number;
  closed: number;
  /** Clients turned away, by reason (limit, no-backend, connect-failed, …). */
  refused: Record<string, number>;
  /** Protocol errors by reason (bad frame, header too large, …); optional per protocol. */
  errors?: Record<string, number>;
}

/**
 * What a protocol's data plane offers the gateway: one per service, fed the
 * sockets its listeners accept. Connection lifetime (drain, shutdown) goes
 * through the service's Cluster, where every connection is registered.
 */
export interface ProtocolHandler {
  /** Take a freshly accepted, paused client socket. */
  readonly accept: (socket: Socket) => void;
  /** Apply settings from a reloaded config to new connections. */
  configure(config: ServiceConfig): void;
  /** Shutdown is starting: ask idle client connections to go too (HTTP/2 GOAWAY, HTTP/1.1 close). Optional. */
  drain?(): void;
  readonly stats: ServiceStats;
  /** Client connections held now. */
  readonly live: number;
}
