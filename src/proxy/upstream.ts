import { connect, type Socket } from 'node:net';
import type { Backend } from '../cluster/backend.ts';
import type { SourceAddressPool } from './source-address.ts';

/** What every long-lived upstream connection is opened with. */
export interface UpstreamSocketSettings {
  /** Local addresses to spread connections over (empty: the kernel chooses). */
  readonly sources: SourceAddressPool;
  /** TCP keepalive idle time in ms, or undefined for off. */
  readonly keepAliveMs: number | undefined;
}

/**
 * Open the gateway's leg to a backend for a relayed connection: the next
 * source address round the list, half-close allowed (a FIN is passed on, not
 * turned into a close), Nagle off (the client's writes are already
 * segmented), TCP keepalive so a silent backend host is found. The connect
 * timeout is the caller's: it knows what else it waits for.
 */
export function connectUpstream(backend: Backend, s: UpstreamSocketSettings): Socket {
  const { host, port } = backend.address;
  return connect({
    host,
    port,
    localAddress: s.sources.next(host),
    allowHalfOpen: true,
    noDelay: true,
    keepAlive: s.keepAliveMs !== undefined,
    keepAliveInitialDelay: s.keepAliveMs ?? 0,
  });
}
