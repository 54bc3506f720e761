/**
 * Header rules shared by the HTTP/1.1 and HTTP/2 data planes: which headers
 * are hop-by-hop (never forwarded), how the client is recorded (Forwarded,
 * X-Forwarded-For/-Proto), and gRPC deadlines.
 */
import type { IncomingHttpHeaders } from 'node:http';

/** Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1, plus HTTP/2's list). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'host',
]);

/** Header map as both node:http and node:http2 accept it. */
export type HeaderMap = Record<string, string | string[]>;

/** The field names a `Connection` header lists (lowercase): hop-by-hop for this message. */
export function connectionNamed(connection: string | readonly string[]): Set<string> {
  const named = new Set<string>();
  for (const part of String(connection).split(',')) named.add(part.trim().toLowerCase());
  return named;
}

/**
 * Copy `src` without hop-by-hop headers, pseudo-headers, and any header the
 * `Connection` header names. `host` is dropped too: the caller sets it (or
 * `:authority`). `te: trailers` is kept, as gRPC requires it.
 */
export function forwardableHeaders(
  src: IncomingHttpHeaders | Readonly<Record<string, string | string[] | undefined>>,
): HeaderMap {
  const out: HeaderMap = {};
  const connection = src.connection;
  const named = connection === undefined ? undefined : connectionNamed(connection);
  for (const name in src) {
    const value = src[name];
    if (value === undefined || name.charCodeAt(0) === 58 /* ':' */) continue;
    if (HOP_BY_HOP.has(name) || named?.has(name) === true) {
      if (name === 'te' && String(value).toLowerCase().includes('trailers')) out.te = 'trailers';
      continue;
    }
    out[name] = value;
  }
  return out;
}

/** The client as the proxy saw it, appended to the forwarding headers. */
export interface ClientInfo {
  ip: string | undefined;
  /** `http` or `https` towards the client. */
  proto: string;
  host: string | undefined;
}

/** Append this hop to `X-Forwarded-For` and `Forwarded`, and set `X-Forwarded-Proto` if absent. */
export function appendForwarded(headers: HeaderMap, client: ClientInfo): void {
  const ip = client.ip ?? 'unknown';
  const xff = headers['x-forwarded-for'];
  headers['x-forwarded-for'] = xff === undefined ? ip : `${String(xff)}, ${ip}`;
  if (headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = client.proto;
  const node = ip.includes(':') ? `"[${ip}]"` : ip;
  let element = `for=${node};proto=${client.proto}`;
  if (client.host !== undefined) element += `;host="${client.host.replace(/["\\]/g, '')}"`;
  const fwd = headers.forwarded;
  headers.forwarded = fwd === undefined ? element : `${String(fwd)}, ${element}`;
}

const GRPC_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** `grpc-timeout` (e.g. `250m`, `5S`) in ms, or undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (m === null) return undefined;
  return Math.max(1, Math.ceil(Number(m[1]) * GRPC_UNITS[m[2]!]!));
}

/** `application/grpc`, `application/grpc+proto`, …: a gRPC call. */
export function isGrpc(contentType: string | string[] | undefined): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc');
}

/** Methods a retry may repeat without changing the outcome (RFC 9110 §9.2.2). */
export function isIdempotent(method: string): boolean {
  return (
    method === 'GET' ||
    method === 'HEAD' ||
    method === 'OPTIONS' ||
    method === 'PUT' ||
    method === 'DELETE' ||
    method === 'TRACE'
  );
}

/** `maxConnectionAge` in ms, 0 when off. */
export function maxAge(config: { maxConnectionAge: number | 'off' }): number {
  return config.maxConnectionAge === 'off' ? 0 : config.maxConnectionAge;
}
