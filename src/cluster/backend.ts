import type { Target } from '../balance/types.ts';
import { formatHostPort, type HostPort } from '../config/address.ts';
import { LiveSet } from '../live-set.ts';
import type { ProxiedConnection } from './connection.ts';

/**
 * `active`: takes new connections. `draining`: removed from the config (or
 * terminating); takes none, its connections are asked to leave.
 * `unhealthy`: failed its active health checks; `ejected`: taken out for a
 * while by outlier detection. Neither takes new connections; their live ones
 * stay (unless `health.closeOnUnhealthy`). Draining wins over both.
 */
export type BackendState = 'active' | 'draining' | 'unhealthy' | 'ejected';

export interface BackendSpec {
  readonly address: HostPort;
  readonly weight: number;
  readonly maxConnections?: number | undefined;
  /** Still serving but on its way out (Kubernetes terminating): keep it, drain it, add no connections. */
  readonly draining?: boolean | undefined;
}

/** One backend endpoint of a cluster, with the live connections registered on it. */
export class Backend implements Target {
  readonly key: string;
  readonly address: HostPort;
  weight: number;
  maxConnections: number | undefined;
  state: BackendState = 'active';
  /** Clock time it became eligible (slow start reads it). */
  since: number;
  /** Live connections, registered for their whole life, oldest first. */
  readonly connections = new LiveSet<ProxiedConnection>();
  /** Totals since the backend appeared, for metrics. */
  connectionsTotal = 0;
  connectFailures = 0;
  /** Verdict of the active health checks (after thresholds); true until a check says otherwise. */
  healthy = true;
  /** Clock time until which outlier detection keeps it out (0: not ejected). */
  ejectedUntil = 0;
  /** Health check results and outlier ejections since the backend appeared, for metrics. */
  checksPassed = 0;
  checksFailed = 0;
  ejections = 0;
  /** Bytes of connections already closed; live ones are read from their sockets. */
  bytesReceivedClosed = 0;
  bytesSentClosed = 0;

  constructor(spec: BackendSpec, now: number) {
    this.key = formatHostPort(spec.address);
    this.address = spec.address;
    this.weight = spec.weight;
    this.maxConnections = spec.maxConnections;
    this.since = now;
  }

  /** Live connections: what least-connections compares. */
  get load(): number {
    return this.connections.size;
  }

  /** True when a per-backend connection limit is reached. */
  full(serviceLimit: number | undefined): boolean {
    const limit = this.maxConnections ?? serviceLimit;
    return limit !== undefined && this.connections.size >= limit;
  }
}
