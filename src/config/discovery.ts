/**
 * Config for the dynamic backend sources (`backends.file`, `backends.dns`,
 * `backends.kubernetes`). `backends.static` stays in schema.ts. Documented in
 * docs/config.md and docs/kubernetes.md.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { type HostPort, parseHostPort } from './address.ts';
import { durationAtLeast, MIN_INTERVAL_MS, MIN_TIMEOUT_MS, refuseLowAboveHigh } from './fields.ts';

const port = z.number().int().min(1).max(65535);

const DNS_MIN_INTERVAL_MS = 1_000;
const DNS_MAX_INTERVAL_MS = 60_000;
const K8S_BACKOFF_MS = 500;
const K8S_MAX_BACKOFF_MS = 30_000;

/** A YAML or JSON file listing backends (same entries as `static:`), re-read when it changes. */
export const fileSourceSchema = z.strictObject({
  path: z.string().min(1, { error: 'give the path of the backends file' }),
  /** Also re-read at this interval, for file systems without change notification. */
  pollInterval: durationAtLeast(MIN_INTERVAL_MS).default(5_000),
});

/** DNS name server as `ip` or `ip:port` (port 53 by default). */
const nameServer = z.string().transform((text, ctx): HostPort => {
  if (isIP(text) !== 0) return { host: text, port: 53 };
  const parsed = parseHostPort(text);
  if (typeof parsed === 'string') {
    ctx.addIssue({
      code: 'custom',
      message: `${parsed}; write a name server as 10.0.0.10, 10.0.0.10:53 or [fd00::a]:53`,
    });
    return z.NEVER;
  }
  return parsed;
});

export const dnsSourceSchema = z
  .strictObject({
    /** Fully qualified name, e.g. `backends.default.svc.cluster.local` or `_grpc._tcp.backends.default.svc.cluster.local`. */
    name: z.string().min(1),
    /** A, AAAA, both (`A+AAAA`), or SRV (targets and ports from the records). */
    type: z.enum(['A', 'AAAA', 'A+AAAA', 'SRV']).default('A'),
    /** Backend port for A/AAAA answers. */
    port: port.optional(),
    /** Name servers; default: the `nameserver` lines of /etc/resolv.conf. */
    servers: z.array(nameServer).optional(),
    /** Re-resolve after the answer's TTL, but never sooner than minInterval nor later than maxInterval. */
    minInterval: durationAtLeast(MIN_INTERVAL_MS).default(DNS_MIN_INTERVAL_MS),
    maxInterval: durationAtLeast(MIN_INTERVAL_MS).default(DNS_MAX_INTERVAL_MS),
    /** Per query attempt. */
    timeout: durationAtLeast(MIN_TIMEOUT_MS).default(2_000),
  })
  .superRefine((d, ctx) => {
    if (d.type !== 'SRV' && d.port === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['port'],
        message: `type ${d.type} needs the backends' port, for example port: 8080`,
      });
    }
    refuseLowAboveHigh(
      ctx,
      { field: 'minInterval', ms: d.minInterval, default: DNS_MIN_INTERVAL_MS },
      { field: 'maxInterval', ms: d.maxInterval, default: DNS_MAX_INTERVAL_MS },
    );
  });

export const kubernetesSourceSchema = z
  .strictObject({
    /** The Service whose EndpointSlices are watched (label kubernetes.io/service-name). */
    service: z.string().min(1),
    /** Default: the gateway pod's namespace (in cluster), the kubeconfig context's, else "default". */
    namespace: z.string().optional(),
    /** The port to use: its name in the Service (`http`) or its number. Default: the only port. */
    port: z.union([z.string().min(1), port]).optional(),
    /** A kubeconfig file; default: $KUBECONFIG, else the in-cluster service account. */
    kubeconfig: z.string().optional(),
    /** Wait between failed attempts starts here and doubles (with jitter) up to maxBackoff. */
    backoff: durationAtLeast(MIN_INTERVAL_MS).default(K8S_BACKOFF_MS),
    maxBackoff: durationAtLeast(MIN_INTERVAL_MS).default(K8S_MAX_BACKOFF_MS),
  })
  .superRefine((k, ctx) => {
    refuseLowAboveHigh(
      ctx,
      { field: 'backoff', ms: k.backoff, default: K8S_BACKOFF_MS },
      { field: 'maxBackoff', ms: k.maxBackoff, default: K8S_MAX_BACKOFF_MS },
    );
  });

export type FileSourceConfig = z.output<typeof fileSourceSchema>;
export type DnsSourceConfig = z.output<typeof dnsSourceSchema>;
export type KubernetesSourceConfig = z.output<typeof kubernetesSourceSchema>;
