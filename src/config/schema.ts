/**
 * The configuration file's shape. This is a contract relied on by users and
 * by checks outside the repository: extend it, never rename fields.
 * Documented in docs/config.md.
 */
import { z } from 'zod';
import { BALANCE_POLICIES, createBalancer } from '../balance/index.ts';
import { ConfigError, HoldfastError } from '../errors.ts';
import { balanceFields, balancerOptions } from './balance.ts';
import { dnsSourceSchema, fileSourceSchema, kubernetesSourceSchema } from './discovery.ts';
import {
  duration,
  durationAtLeast,
  durationOrOff,
  hostPort,
  ipAddress,
  MIN_INTERVAL_MS,
  MIN_TIMEOUT_MS,
} from './fields.ts';
import { healthSchema, outlierSchema } from './health.ts';
import { httpServiceFields } from './http.ts';
import { maxConnectionAgeSchema, rebalanceSchema, websocketSchema } from './websocket.ts';

const positiveInt = z.number().int().positive();

export const backendEntry = z.union(
  [
    hostPort.transform((address) => ({
      address,
      weight: 1,
      maxConnections: undefined as number | undefined,
    })),
    z.strictObject({
      address: hostPort,
      weight: z.number().int().min(0).max(1_000_000).default(1),
      maxConnections: positiveInt.optional(),
    }),
  ],
  { error: 'a backend is "host:port" or { address: host:port, weight: N }' },
);

const backends = z.strictObject({
  static: z.array(backendEntry).default([]),
  // Dynamic sources (src/config/discovery.ts); one source per service.
  file: fileSourceSchema.optional(),
  dns: dnsSourceSchema.optional(),
  kubernetes: kubernetesSourceSchema.optional(),
});

/**
 * Fields only the HTTP-family data planes read (src/proxy/http*.ts,
 * websocket.ts). The TCP plane takes `timeouts`, `tcpKeepAlive`, `limits`,
 * `sourceAddresses`, `drain`, `rebalance` and the balancing fields, and
 * nothing of these; a tcp service that names one would run without it, so it
 * is refused instead.
 */
const HTTP_ONLY_FIELDS: readonly string[] = [
  ...Object.keys(httpServiceFields),
  'websocket',
  'maxConnectionAge',
];

/**
 * Look at the service as written (before defaults fill in the HTTP fields)
 * and refuse HTTP-only fields on a tcp service, each at its own line.
 */
function refuseHttpFieldsOnTcp(input: unknown, ctx: z.RefinementCtx): unknown {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return input;
  const fields = input as Record<string, unknown>;
  const protocol = fields.protocol;
  if (protocol !== undefined && protocol !== 'tcp') return input;
  const which = protocol === undefined ? 'protocol: tcp (the default)' : 'protocol: tcp';
  for (const key of HTTP_ONLY_FIELDS) {
    if (!(key in fields)) continue;
    ctx.addIssue({
      code: 'custom',
      path: [key],
      message: `applies to protocol: http only, and this service is ${which}; remove it, or set protocol: http`,
    });
  }
  return input;
}

const serviceFields = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/, {
    error: 'use letters, digits, "-", "_" or "." (at most 63), starting and ending with a letter or digit',
  }),
  protocol: z.enum(['tcp', 'http']).default('tcp'),
  listen: z
    .union([
      hostPort.transform((hp) => [hp]),
      z.array(hostPort).min(1, { error: 'list at least one address' }),
    ])
    .describe('addresses to accept on; several ports form one service'),
  /** Default: p2c for protocol: http (per request), least-connections otherwise (see gateway.ts). */
  balance: z.enum(BALANCE_POLICIES).optional(),
  /** hashKey, tableSize, persistence, slowStart, peakEwma (src/config/balance.ts). */
  ...balanceFields,
  backends,
  health: healthSchema.optional(),
  outlierDetection: outlierSchema.optional(),
  /** 0s: connections are asked to leave and closed at once. */
  drain: z.strictObject({ timeout: duration.default(30_000) }).prefault({}),
  sourceAddresses: z.array(ipAddress).default([]),
  timeouts: z
    .strictObject({
      connect: durationAtLeast(MIN_TIMEOUT_MS).default(5_000),
      /** `off` (or 0s): no idle limit; the TCP plane's sweep reads 0 as off. */
      idle: durationOrOff(MIN_INTERVAL_MS).default(3_600_000),
    })
    .prefault({}),
  /** The kernel counts keepalive idle time in whole seconds: below 1 s it would silently become 1 s. */
  tcpKeepAlive: z.union([z.literal('off'), durationAtLeast(1_000, true)]).default(30_000),
  limits: z
    .strictObject({
      maxConnections: positiveInt.optional(),
      maxConnectionsPerBackend: positiveInt.optional(),
    })
    .prefault({}),
  /** protocol: http only (src/config/http.ts). */
  ...httpServiceFields,
  /** WebSocket heartbeats/limits, max connection age, rebalancing (src/config/websocket.ts). */
  websocket: websocketSchema,
  maxConnectionAge: maxConnectionAgeSchema,
  rebalance: rebalanceSchema,
});

const service = z.preprocess(refuseHttpFieldsOnTcp, serviceFields);

export const configSchema = z
  .strictObject({
    admin: z.strictObject({ listen: hostPort }).optional(),
    log: z
      .strictObject({
        level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
      })
      .prefault({}),
    /**
     * Proxy processes. One process holds about 9,900 proxied TCP connections
     * under a 20,000 file-descriptor limit; several workers share each port
     * (SO_REUSEPORT) and multiply that. `auto`: one per CPU.
     */
    workers: z.union([z.number().int().min(1).max(256), z.literal('auto')]).default(1),
    services: z.array(service).min(1, { error: 'configure at least one service' }),
  })
  .superRefine((config, ctx) => {
    const names = new Map<string, number>();
    const listens = new Map<string, string>();
    config.services.forEach((s, i) => {
      // Options that do not fit the policy are reported here, with their line.
      try {
        createBalancer(s.balance ?? defaultBalance(s.protocol), balancerOptions(s));
      } catch (err) {
        if (!(err instanceof HoldfastError)) throw err;
        const field =
          err instanceof ConfigError
            ? (err.field ?? 'balance')
            : err.code === 'HOLDFAST_ERR_MAGLEV_TABLE_SIZE'
              ? 'tableSize'
              : 'balance';
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, ...field.split('.')],
          message: err instanceof ConfigError ? err.message.replace(/^[^:]+: /, '') : err.message,
        });
      }
      const seen = names.get(s.name);
      if (seen !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'name'],
          message: `"${s.name}" is already the name of services[${seen}]; names must be unique`,
        });
      }
      names.set(s.name, i);
      s.listen.forEach((hp, j) => {
        const key = `${hp.host}|${hp.port}`;
        const other = listens.get(key);
        if (other !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['services', i, 'listen', j],
            message: `port ${hp.port} on ${hp.host} is already a listener of service "${other}"`,
          });
        }
        listens.set(key, s.name);
      });
      const dynamic = (['file', 'dns', 'kubernetes'] as const).filter((k) => s.backends[k] !== undefined);
      if (dynamic.length + (s.backends.static.length > 0 ? 1 : 0) > 1) {
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'backends'],
          message: `choose one backend source per service, not ${[...(s.backends.static.length > 0 ? ['static'] : []), ...dynamic].join(' and ')}`,
        });
      }
      if (s.hashKey === 'sni' && (s.protocol !== 'http' || s.tls === undefined)) {
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'hashKey'],
          message:
            'hashKey: sni needs a listener holdfast terminates TLS on (protocol: http with tls:); a tcp service never sees the server name',
        });
      }
      if (s.backends.static.length === 0 && dynamic.length === 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'backends'],
          message: 'list at least one backend, for example static: [127.0.0.1:8080]',
        });
      }
    });
  });

/** The policy a service gets without `balance:`: p2c per request for HTTP, least-connections otherwise. */
export function defaultBalance(protocol: 'tcp' | 'http'): (typeof BALANCE_POLICIES)[number] {
  return protocol === 'http' ? 'p2c' : 'least-connections';
}

export type Config = z.output<typeof configSchema>;
export type ServiceConfig = Config['services'][number];
