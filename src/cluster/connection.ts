import type { LiveNode } from '../live-set.ts';

/** Why a connection is asked to leave its backend. */
export type LeaveReason = 'drain' | 'shutdown' | 'rebalance' | 'max-age' | 'unhealthy';

/**
 * A proxied connection (or stream) as the cluster sees it: registered on its
 * backend for its whole life, so least-connections counts it and drain or
 * rebalance can reach it. Each protocol in `proxy/` implements this.
 */
export interface ProxiedConnection {
  /** When the connection was registered (Clock time, ms). */
  readonly openedAt: number;
  /**
   * Ask the peers to go, gracefully and in the protocol's own words (TCP FIN,
   * WebSocket close 1001/1012, HTTP/2 GOAWAY, `Connection: close`).
   * Idempotent. The connection unregisters itself once it is closed.
   */
  leave(reason: LeaveReason): void;
  /** Bytes received from and sent to the backend so far, where the protocol counts them. */
  readonly bytesIn?: number;
  readonly bytesOut?: number;
  /** Its place among its backend's live connections: written by cluster/ only, starts undefined. */
  backendNode: LiveNode<ProxiedConnection> | undefined;
  /** Close now, without further grace (a drain deadline has passed). Idempotent. */
  destroy(): void;
}
