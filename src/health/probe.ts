/**
 * One health probe of one backend: tcp (connect), http (GET a path, status in
 * range) or grpc (grpc.health.v1.Health/Check says SERVING). Each resolves,
 * never rejects, within its timeout.
 */
import { request as httpRequest } from 'node:http';
import { connect as h2connect, constants as h2 } from 'node:http2';
import { connect } from 'node:net';
import type { Clock } from '../cluster/clock.ts';
import type { HostPort } from '../config/address.ts';
import { formatHostPort } from '../config/address.ts';
import type { HealthConfig } from '../config/health.ts';

export interface ProbeResult {
  readonly ok: boolean;
  /** Why it failed (or `ok`): `ECONNREFUSED`, `timeout`, `status 503`, `NOT_SERVING`, … */
  readonly detail: string;
}

/**
 * Run the configured probe against `target` (the backend, or its `health.port`),
 * from `localAddress` when given (the service's `sourceAddresses`: a probe must
 * come from where traffic comes from, or per-source firewall rules make it lie).
 */
export function probe(
  config: HealthConfig,
  target: HostPort,
  clock: Clock,
  localAddress?: string,
): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false;
    let cleanup = (): void => {};
    const finish = (ok: boolean, detail: string): void => {
      if (done) return;
      done = true;
      timer.cancel();
      cleanup();
      resolve({ ok, detail });
    };
    const timer = clock.setTimer(() => finish(false, 'timeout'), config.timeout);
    const fail = (err: Error): void => finish(false, (err as NodeJS.ErrnoException).code ?? err.message);
    switch (config.type) {
      case 'tcp': {
        const socket = connect({ host: target.host, port: target.port, localAddress });
        cleanup = () => socket.destroy();
        socket.once('connect', () => finish(true, 'connected'));
        socket.once('error', fail);
        break;
      }
      case 'http': {
        const req = httpRequest({
          host: target.host,
          port: target.port,
          path: config.path,
          method: 'GET',
          agent: false,
          localAddress,
          headers: {
            host: config.host ?? formatHostPort(target),
            'user-agent': 'holdfast-health',
            connection: 'close',
          },
        });
        cleanup = () => req.destroy();
        req.once('error', fail);
        req.once('response', (res) => {
          const status = res.statusCode ?? 0;
          res.resume();
          const ok = config.expectStatus.some(([lo, hi]) => status >= lo && status <= hi);
          finish(ok, `status ${status}`);
        });
        req.end();
        break;
      }
      case 'grpc': {
        const session = h2connect(`http://${formatHostPort(target)}`, {
          createConnection: () => connect({ host: target.host, port: target.port, localAddress }),
        });
        cleanup = () => session.destroy();
        session.once('error', fail);
        const stream = session.request({
          [h2.HTTP2_HEADER_METHOD]: 'POST',
          [h2.HTTP2_HEADER_PATH]: '/grpc.health.v1.Health/Check',
          [h2.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
          te: 'trailers',
          'user-agent': 'holdfast-health',
        });
        stream.once('error', fail);
        const chunks: Buffer[] = [];
        let grpcStatus: string | undefined;
        stream.on('response', (headers) => {
          // A trailers-only answer (an error) carries grpc-status in the headers.
          const s = headers['grpc-status'];
          if (s !== undefined) grpcStatus = String(s);
        });
        stream.on('trailers', (trailers: Record<string, string | string[] | undefined>) => {
          const s = trailers['grpc-status'];
          if (s !== undefined) grpcStatus = String(s);
        });
        stream.on('data', (d: Buffer) => chunks.push(d));
        stream.once('end', () => {
          if (grpcStatus !== '0') {
            finish(
              false,
              grpcStatus === '12'
                ? 'health service not implemented'
                : `grpc-status ${grpcStatus ?? 'missing'}`,
            );
            return;
          }
          const status = decodeHealthResponse(Buffer.concat(chunks));
          finish(status === 1, SERVING_STATUS[status] ?? `status ${status}`);
        });
        stream.end(encodeHealthRequest(config.grpcService));
        break;
      }
    }
  });
}

const SERVING_STATUS: Readonly<Record<number, string>> = {
  0: 'UNKNOWN',
  1: 'SERVING',
  2: 'NOT_SERVING',
  3: 'SERVICE_UNKNOWN',
};

/**
 * A gRPC message frame holding `HealthCheckRequest { string service = 1; }`.
 * Hand-encoded: one length-delimited field, so grpc-js is not a runtime dependency.
 */
export function encodeHealthRequest(service: string): Buffer {
  const name = Buffer.from(service, 'utf8');
  const len = varint(name.length);
  const body = name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a]), len, name]);
  const frame = Buffer.alloc(5);
  frame.writeUInt32BE(body.length, 1);
  return Buffer.concat([frame, body]);
}

/** `HealthCheckResponse { ServingStatus status = 1; }` from a gRPC frame; 0 (UNKNOWN) if absent. */
export function decodeHealthResponse(data: Buffer): number {
  if (data.length < 5 || data[0] !== 0) return 0;
  const end = Math.min(data.length, 5 + data.readUInt32BE(1));
  let i = 5;
  let status = 0;
  while (i < end) {
    const [key, next] = readVarint(data, i);
    i = next;
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) {
      const [v, after] = readVarint(data, i);
      i = after;
      if (field === 1) status = v;
    } else if (wire === 2) {
      const [len, after] = readVarint(data, i);
      i = after + len;
    } else if (wire === 5) i += 4;
    else if (wire === 1) i += 8;
    else break;
  }
  return status;
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

function readVarint(buf: Buffer, at: number): [number, number] {
  let v = 0;
  let shift = 0;
  let i = at;
  while (i < buf.length) {
    const b = buf[i++]!;
    v += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) break;
    shift += 7;
  }
  return [v, i];
}
