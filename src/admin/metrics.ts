import { Counter, Gauge, Registry } from 'prom-client';
import { registerProcessMetrics } from './process-metrics.ts';
import type { Backend } from '../cluster/backend.ts';
import type { Cluster } from '../cluster/cluster.ts';
import type { MembershipStats } from '../discovery/membership.ts';
import type { ServiceStats } from '../proxy/handler.ts';

/** One service as the metrics see it. */
export interface ServiceView {
  name: string;
  protocol: string;
  cluster: Cluster;
  stats: ServiceStats;
  live: number;
  membership?: { readonly stats: MembershipStats };
}

/** What the metrics read at scrape time; nothing is counted twice on the hot path. */
export interface MetricsSource {
  services(): Iterable<ServiceView>;
  draining(): boolean;
}

type Labels = Record<string, string>;
/** One value of a metric: its labels and its number. */
type Sample = readonly [Labels, number];

interface Definition {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  labelNames: string[];
  /** The samples at scrape time. */
  samples: (source: MetricsSource) => Iterable<Sample>;
}

function* perService(source: MetricsSource, f: (s: ServiceView) => Iterable<Sample>): Iterable<Sample> {
  for (const s of source.services()) yield* f(s);
}

function* perBackend(
  source: MetricsSource,
  f: (s: ServiceView, b: Backend) => Iterable<Sample>,
): Iterable<Sample> {
  for (const s of source.services()) for (const b of s.cluster.backends.values()) yield* f(s, b);
}

/** Bytes to and from a backend: its closed connections' totals plus what live ones have moved so far. */
function backendBytes(b: Backend): [number, number] {
  let inBytes = b.bytesReceivedClosed;
  let outBytes = b.bytesSentClosed;
  for (const c of b.connections) {
    inBytes += c.bytesIn ?? 0;
    outBytes += c.bytesOut ?? 0;
  }
  return [inBytes, outBytes];
}

const DEFINITIONS: readonly Definition[] = [
  {
    name: 'holdfast_backend_connections',
    help: 'Live proxied connections (or streams) registered on each backend.',
    type: 'gauge',
    labelNames: ['service', 'backend'],
    samples: (src) => perBackend(src, (s, b) => [[{ service: s.name, backend: b.key }, b.connections.size]]),
  },
  {
    name: 'holdfast_backend_connections_total',
    help: 'Connections ever registered on each backend.',
    type: 'counter',
    labelNames: ['service', 'backend'],
    samples: (src) => perBackend(src, (s, b) => [[{ service: s.name, backend: b.key }, b.connectionsTotal]]),
  },
  {
    name: 'holdfast_backend_connect_failures_total',
    help: 'Upstream connection attempts that were refused or timed out.',
    type: 'counter',
    labelNames: ['service', 'backend'],
    samples: (src) => perBackend(src, (s, b) => [[{ service: s.name, backend: b.key }, b.connectFailures]]),
  },
  {
    name: 'holdfast_backend_bytes_total',
    help: 'Bytes relayed to (out) and from (in) each backend.',
    type: 'counter',
    labelNames: ['service', 'backend', 'direction'],
    samples: (src) =>
      perBackend(src, (s, b) => {
        const [inBytes, outBytes] = backendBytes(b);
        return [
          [{ service: s.name, backend: b.key, direction: 'in' }, inBytes],
          [{ service: s.name, backend: b.key, direction: 'out' }, outBytes],
        ];
      }),
  },
  {
    name: 'holdfast_backend_state',
    help: 'Backend state: 1 for the state it is in (active, draining, unhealthy, ejected).',
    type: 'gauge',
    labelNames: ['service', 'backend', 'state'],
    samples: (src) => perBackend(src, (s, b) => [[{ service: s.name, backend: b.key, state: b.state }, 1]]),
  },
  {
    name: 'holdfast_connections_accepted_total',
    help: 'Client connections accepted by each service.',
    type: 'counter',
    labelNames: ['service', 'protocol'],
    samples: (src) => perService(src, (s) => [[{ service: s.name, protocol: s.protocol }, s.stats.accepted]]),
  },
  {
    name: 'holdfast_connections_closed_total',
    help: 'Client connections closed after being accepted.',
    type: 'counter',
    labelNames: ['service'],
    samples: (src) => perService(src, (s) => [[{ service: s.name }, s.stats.closed]]),
  },
  {
    name: 'holdfast_connections_refused_total',
    help: 'Client connections turned away, by reason (limit, no-backend, connect-failed).',
    type: 'counter',
    labelNames: ['service', 'reason'],
    samples: (src) =>
      perService(src, (s) =>
        Object.entries(s.stats.refused).map(([reason, n]) => [{ service: s.name, reason }, n]),
      ),
  },
  {
    name: 'holdfast_protocol_errors_total',
    help: 'Bad input and protocol errors, by reason.',
    type: 'counter',
    labelNames: ['service', 'reason'],
    samples: (src) =>
      perService(src, (s) =>
        Object.entries(s.stats.errors ?? {}).map(([reason, n]) => [{ service: s.name, reason }, n]),
      ),
  },
  {
    name: 'holdfast_service_connections',
    help: 'Client connections held by each service now.',
    type: 'gauge',
    labelNames: ['service'],
    samples: (src) => perService(src, (s) => [[{ service: s.name }, s.live]]),
  },
  {
    name: 'holdfast_discovery_updates_total',
    help: 'Changes of the backend set applied from the discovery source (static, file, dns, kubernetes).',
    type: 'counter',
    labelNames: ['service', 'source'],
    samples: (src) =>
      perService(src, (s) => {
        const m = s.membership?.stats;
        return m === undefined ? [] : [[{ service: s.name, source: m.source }, m.updates]];
      }),
  },
  {
    name: 'holdfast_discovery_errors_total',
    help: 'Failed lookups, reads or watches of the discovery source, by reason; the last good set stayed.',
    type: 'counter',
    labelNames: ['service', 'source', 'reason'],
    samples: (src) =>
      perService(src, (s) => {
        const m = s.membership?.stats;
        if (m === undefined) return [];
        return Object.entries(m.errors).map(([reason, n]) => [
          { service: s.name, source: m.source, reason },
          n,
        ]);
      }),
  },
  {
    name: 'holdfast_discovery_endpoints',
    help: 'Endpoints (not counting terminating ones) in the last set the discovery source delivered.',
    type: 'gauge',
    labelNames: ['service', 'source'],
    samples: (src) =>
      perService(src, (s) => {
        const m = s.membership?.stats;
        return m === undefined ? [] : [[{ service: s.name, source: m.source }, m.endpoints]];
      }),
  },
  {
    name: 'holdfast_health_checks_total',
    help: 'Active health check results per backend (pass, fail).',
    type: 'counter',
    labelNames: ['service', 'backend', 'result'],
    samples: (src) =>
      perBackend(src, (s, b) => {
        const out: Sample[] = [];
        if (b.checksPassed > 0)
          out.push([{ service: s.name, backend: b.key, result: 'pass' }, b.checksPassed]);
        if (b.checksFailed > 0)
          out.push([{ service: s.name, backend: b.key, result: 'fail' }, b.checksFailed]);
        return out;
      }),
  },
  {
    name: 'holdfast_outlier_ejections_total',
    help: 'Times outlier detection ejected each backend.',
    type: 'counter',
    labelNames: ['service', 'backend'],
    samples: (src) =>
      perBackend(src, (s, b) =>
        b.ejections > 0 ? [[{ service: s.name, backend: b.key }, b.ejections]] : [],
      ),
  },
  {
    name: 'holdfast_outlier_ejections_capped_total',
    help: 'Ejections not made because maxEjectionPercent of the backends were already ejected.',
    type: 'counter',
    labelNames: ['service'],
    samples: (src) =>
      perService(src, (s) => {
        const m = s.membership?.stats;
        return m === undefined ? [] : [[{ service: s.name }, m.ejectionsCapped()]];
      }),
  },
  {
    name: 'holdfast_draining',
    help: '1 while the gateway is shutting down and draining connections.',
    type: 'gauge',
    labelNames: [],
    samples: (src) => [[{}, src.draining() ? 1 : 0]],
  },
];

/**
 * Prometheus metrics. Values are read from the live model when scraped
 * (collect callbacks), so proxying pays nothing for them.
 */
export function createMetrics(source: MetricsSource): Registry {
  const registry = new Registry();
  registerProcessMetrics(registry, 'holdfast_');
  const registers = [registry];
  for (const d of DEFINITIONS) {
    const common = { name: d.name, help: d.help, labelNames: d.labelNames, registers };
    if (d.type === 'gauge') {
      new Gauge({
        ...common,
        collect() {
          this.reset();
          for (const [labels, value] of d.samples(source)) this.set(labels, value);
        },
      });
    } else {
      new Counter({
        ...common,
        collect() {
          this.reset();
          for (const [labels, value] of d.samples(source)) this.inc(labels, value);
        },
      });
    }
  }
  return registry;
}
