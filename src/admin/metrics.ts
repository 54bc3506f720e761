import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { Cluster } from '../cluster/cluster.ts';
import type { MembershipStats } from '../discovery/membership.ts';
import type { ServiceStats } from '../proxy/handler.ts';

/** What the metrics read at scrape time; nothing is counted twice on the hot path. */
export interface MetricsSource {
  services(): Iterable<{
    name: string;
    protocol: string;
    cluster: Cluster;
    stats: ServiceStats;
    live: number;
    membership?: { readonly stats: MembershipStats };
  }>;
  draining(): boolean;
}

/**
 * Prometheus metrics. Values are read from the live model when scraped
 * (collect callbacks), so proxying pays nothing for them.
 */
export function createMetrics(source: MetricsSource): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'holdfast_' });
  const registers = [registry];

  new Gauge({
    name: 'holdfast_backend_connections',
    help: 'Live proxied connections (or streams) registered on each backend.',
    labelNames: ['service', 'backend'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values())
          this.set({ service: s.name, backend: b.key }, b.connections.size);
    },
  });
  new Counter({
    name: 'holdfast_backend_connections_total',
    help: 'Connections ever registered on each backend.',
    labelNames: ['service', 'backend'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values())
          this.inc({ service: s.name, backend: b.key }, b.connectionsTotal);
    },
  });
  new Counter({
    name: 'holdfast_backend_connect_failures_total',
    help: 'Upstream connection attempts that were refused or timed out.',
    labelNames: ['service', 'backend'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values())
          this.inc({ service: s.name, backend: b.key }, b.connectFailures);
    },
  });
  new Counter({
    name: 'holdfast_backend_bytes_total',
    help: 'Bytes relayed to (out) and from (in) each backend.',
    labelNames: ['service', 'backend', 'direction'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values()) {
          let inBytes = b.bytesReceivedClosed;
          let outBytes = b.bytesSentClosed;
          for (const c of b.connections) {
            inBytes += c.bytesIn ?? 0;
            outBytes += c.bytesOut ?? 0;
          }
          this.inc({ service: s.name, backend: b.key, direction: 'in' }, inBytes);
          this.inc({ service: s.name, backend: b.key, direction: 'out' }, outBytes);
        }
    },
  });
  new Gauge({
    name: 'holdfast_backend_state',
    help: 'Backend state: 1 for the state it is in (active, draining, …).',
    labelNames: ['service', 'backend', 'state'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values())
          this.set({ service: s.name, backend: b.key, state: b.state }, 1);
    },
  });
  new Counter({
    name: 'holdfast_connections_accepted_total',
    help: 'Client connections accepted by each service.',
    labelNames: ['service', 'protocol'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        this.inc({ service: s.name, protocol: s.protocol }, s.stats.accepted);
    },
  });
  new Counter({
    name: 'holdfast_connections_closed_total',
    help: 'Client connections closed after being accepted.',
    labelNames: ['service'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services()) this.inc({ service: s.name }, s.stats.closed);
    },
  });
  new Counter({
    name: 'holdfast_connections_refused_total',
    help: 'Client connections turned away, by reason (limit, no-backend, connect-failed).',
    labelNames: ['service', 'reason'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const [reason, n] of Object.entries(s.stats.refused)) this.inc({ service: s.name, reason }, n);
    },
  });
  new Counter({
    name: 'holdfast_protocol_errors_total',
    help: 'Bad input and protocol errors, by reason.',
    labelNames: ['service', 'reason'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const [reason, n] of Object.entries(s.stats.errors ?? {}))
          this.inc({ service: s.name, reason }, n);
    },
  });
  new Gauge({
    name: 'holdfast_service_connections',
    help: 'Client connections held by each service now.',
    labelNames: ['service'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services()) this.set({ service: s.name }, s.live);
    },
  });
  // Discovery and health (src/discovery, src/health).
  new Counter({
    name: 'holdfast_discovery_updates_total',
    help: 'Changes of the backend set applied from the discovery source (static, file, dns, kubernetes).',
    labelNames: ['service', 'source'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services()) {
        const m = s.membership?.stats;
        if (m !== undefined) this.inc({ service: s.name, source: m.source }, m.updates);
      }
    },
  });
  new Counter({
    name: 'holdfast_discovery_errors_total',
    help: 'Failed lookups, reads or watches of the discovery source, by reason; the last good set stayed.',
    labelNames: ['service', 'source', 'reason'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services()) {
        const m = s.membership?.stats;
        if (m !== undefined)
          for (const [reason, n] of Object.entries(m.errors))
            this.inc({ service: s.name, source: m.source, reason }, n);
      }
    },
  });
  new Gauge({
    name: 'holdfast_discovery_endpoints',
    help: 'Endpoints (not counting terminating ones) in the last set the discovery source delivered.',
    labelNames: ['service', 'source'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services()) {
        const m = s.membership?.stats;
        if (m !== undefined) this.set({ service: s.name, source: m.source }, m.endpoints);
      }
    },
  });
  new Counter({
    name: 'holdfast_health_checks_total',
    help: 'Active health check results per backend (pass, fail).',
    labelNames: ['service', 'backend', 'result'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values()) {
          if (b.checksPassed > 0)
            this.inc({ service: s.name, backend: b.key, result: 'pass' }, b.checksPassed);
          if (b.checksFailed > 0)
            this.inc({ service: s.name, backend: b.key, result: 'fail' }, b.checksFailed);
        }
    },
  });
  new Counter({
    name: 'holdfast_outlier_ejections_total',
    help: 'Times outlier detection ejected each backend.',
    labelNames: ['service', 'backend'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services())
        for (const b of s.cluster.backends.values())
          if (b.ejections > 0) this.inc({ service: s.name, backend: b.key }, b.ejections);
    },
  });
  new Counter({
    name: 'holdfast_outlier_ejections_capped_total',
    help: 'Ejections not made because maxEjectionPercent of the backends were already ejected.',
    labelNames: ['service'],
    registers,
    collect() {
      this.reset();
      for (const s of source.services()) {
        const m = s.membership?.stats;
        if (m !== undefined) this.inc({ service: s.name }, m.ejectionsCapped());
      }
    },
  });
  new Gauge({
    name: 'holdfast_draining',
    help: '1 while the gateway is shutting down and draining connections.',
    registers,
    collect() {
      this.set(source.draining() ? 1 : 0);
    },
  });
  return registry;
}
