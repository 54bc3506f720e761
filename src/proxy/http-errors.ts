/**
 * Answers the proxy itself gives when it cannot deliver a request. Each says
 * why in a short body and in `x-holdfast-error`; gRPC calls get the matching
 * `grpc-status` instead (UNAVAILABLE, DEADLINE_EXCEEDED, …).
 */
import { HoldfastError } from '../errors.ts';
import type { HeaderMap } from './http-headers.ts';

/** Why a request failed inside the proxy (also the `stats.errors` / `stats.refused` key). */
export type ProxyFailure =
  | 'no-backend'
  | 'connect-failed'
  | 'upstream-reset'
  | 'upstream-timeout'
  | 'deadline-exceeded'
  | 'retries-exhausted'
  | 'bad-response'
  | 'shutting-down';

interface FailureInfo {
  status: number;
  grpc: number;
  text: string;
}

/** gRPC status codes the proxy uses. */
export const GRPC_UNAVAILABLE = 14;
export const GRPC_DEADLINE_EXCEEDED = 4;
export const GRPC_INTERNAL = 13;

const FAILURES: Record<ProxyFailure, FailureInfo> = {
  'no-backend': { status: 503, grpc: GRPC_UNAVAILABLE, text: 'no backend is available for this service' },
  'connect-failed': { status: 502, grpc: GRPC_UNAVAILABLE, text: 'could not connect to a backend' },
  'upstream-reset': {
    status: 502,
    grpc: GRPC_UNAVAILABLE,
    text: 'the backend closed the connection before responding',
  },
  'upstream-timeout': {
    status: 504,
    grpc: GRPC_DEADLINE_EXCEEDED,
    text: 'the backend did not respond in time',
  },
  'deadline-exceeded': {
    status: 504,
    grpc: GRPC_DEADLINE_EXCEEDED,
    text: 'the grpc-timeout deadline passed',
  },
  'retries-exhausted': { status: 502, grpc: GRPC_UNAVAILABLE, text: 'every backend tried failed' },
  'bad-response': { status: 502, grpc: GRPC_INTERNAL, text: 'the backend sent an invalid response' },
  'shutting-down': { status: 503, grpc: GRPC_UNAVAILABLE, text: 'the proxy is shutting down' },
};

export function failureStatus(kind: ProxyFailure): number {
  return FAILURES[kind].status;
}

/** Status, headers and body for a plain HTTP error reply. */
export function errorReply(kind: ProxyFailure): { status: number; headers: HeaderMap; body: string } {
  const f = FAILURES[kind];
  const body = `${f.status} ${f.text} (holdfast: ${kind})\n`;
  return {
    status: f.status,
    headers: {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': String(Buffer.byteLength(body)),
      'x-holdfast-error': kind,
    },
    body,
  };
}

/** Headers of a trailers-only gRPC error response (HTTP 200, status in headers). */
export function grpcErrorHeaders(kind: ProxyFailure): HeaderMap {
  const f = FAILURES[kind];
  return {
    'content-type': 'application/grpc',
    'grpc-status': String(f.grpc),
    'grpc-message': `holdfast: ${f.text}`,
    'x-holdfast-error': kind,
  };
}

/** An upstream attempt failed; `sent` tells whether the backend may have seen the request. */
export class UpstreamError extends HoldfastError {
  readonly kind: ProxyFailure;
  /** False when the request provably never reached the backend (refused, above GOAWAY, connect failed). */
  readonly sent: boolean;
  constructor(kind: ProxyFailure, sent: boolean, detail: string, options?: ErrorOptions) {
    super('HOLDFAST_ERR_UPSTREAM', `${FAILURES[kind].text}: ${detail}`, options);
    this.kind = kind;
    this.sent = sent;
  }
}
