/**
 * Settings of `protocol: http` services (HTTP/1.1, HTTP/2 and gRPC data
 * planes), spread into the service object of schema.ts. Every field has a
 * default, so a plain `protocol: http` service needs none of them.
 * Documented in docs/http.md.
 */
import { z } from 'zod';
import { durationOrOff, MIN_INTERVAL_MS, MIN_TIMEOUT_MS } from './fields.ts';

const share = z.number().min(0).max(1);

export const httpServiceFields = {
  /** How holdfast talks to backends. `http2` is needed for gRPC. */
  upstream: z
    .strictObject({
      protocol: z.enum(['http1', 'http2']).default('http1'),
      /** HTTP/1.1: most pooled keep-alive connections per backend. */
      connectionsPerBackend: z.number().int().positive().max(10_000).default(64),
      /** HTTP/2: most sessions per backend (more open when MAX_CONCURRENT_STREAMS is reached). */
      sessionsPerBackend: z.number().int().positive().max(1_000).default(8),
    })
    .prefault({}),
  /** Serve HTTPS: HTTP/2 or HTTP/1.1 chosen by ALPN. PEM file paths. */
  tls: z.strictObject({ cert: z.string().min(1), key: z.string().min(1) }).optional(),
  /** Extra attempts on another backend for a failed request (idempotent, or never sent). */
  retries: z.number().int().min(0).max(5).default(2),
  /** Retries in flight are kept under `ratio` × live requests (at least `min`), so retries cannot multiply load. */
  retryBudget: z
    .strictObject({ ratio: share.default(0.2), min: z.number().int().min(0).default(3) })
    .prefault({}),
  /** Per-request timeouts. `request`: until the backend's response headers; `off` for none. */
  httpTimeouts: z
    .strictObject({
      request: durationOrOff(MIN_TIMEOUT_MS).default(30_000),
      /** Idle keep-alive client connections (HTTP/1.1) and sessions (HTTP/2) close after this. */
      clientIdle: durationOrOff(MIN_INTERVAL_MS).default(300_000),
    })
    .prefault({}),
  http2: z
    .strictObject({
      /** PING keepalive on downstream and upstream sessions; a missing ACK closes the session. */
      ping: z
        .strictObject({
          interval: durationOrOff(MIN_INTERVAL_MS).default(30_000),
          timeout: durationOrOff(MIN_TIMEOUT_MS).default(10_000),
          /** Each interval is randomised by ± this share, so sessions do not ping in lockstep. */
          jitter: share.default(0.1),
        })
        .prefault({}),
      /** SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients. */
      maxConcurrentStreams: z
        .number()
        .int()
        .positive()
        .max(2 ** 31 - 1)
        .default(250),
    })
    .prefault({}),
  /** Request header limits; beyond them a request gets 431. */
  headerLimits: z
    .strictObject({
      maxSize: z.number().int().min(1024).max(1_048_576).default(16_384),
      maxCount: z.number().int().min(8).max(10_000).default(100),
    })
    .prefault({}),
};

export const httpServiceSchema = z.object(httpServiceFields);
export type HttpServiceSettings = z.output<typeof httpServiceSchema>;
