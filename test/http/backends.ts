/** Real HTTP/1.1, HTTP/2 and gRPC backends for the HTTP integration tests. */
import { once } from 'node:events';
import { createServer as createH1, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  type ClientHttp2Session,
  createServer as createH2,
  type Http2Server,
  type ServerHttp2Stream,
  type IncomingHttpHeaders,
} from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { after, before } from 'node:test';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';

export interface HttpBackend {
  readonly port: number;
  /** Requests (or streams, or calls) served. */
  served: number;
  close(): Promise<void>;
}

export type H1Route = (req: IncomingMessage, res: ServerResponse, port: number) => boolean;

/**
 * An HTTP/1.1 backend answering `port` in body and `x-backend`. `/echo` sends
 * the request body back, `/headers` the request headers as JSON, `/slow?ms=N`
 * waits first.
 */
export async function startH1Backend(route?: H1Route): Promise<HttpBackend> {
  const sockets = new Set<Socket>();
  const server: Server = createH1({ keepAliveTimeout: 60_000 }, (req, res) => {
    backend.served++;
    const port = backend.port;
    if (route?.(req, res, port) === true) return;
    const url = new URL(req.url ?? '/', 'http://x');
    res.setHeader('x-backend', String(port));
    if (url.pathname === '/echo') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      req.pipe(res);
      return;
    }
    if (url.pathname === '/headers') {
      req.resume();
      res.end(JSON.stringify(req.headers));
      return;
    }
    const ms = Number(url.searchParams.get('ms') ?? 0);
    req.resume();
    const reply = (): void => void res.end(String(port));
    if (ms > 0) setTimeout(reply, ms);
    else reply();
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const backend: HttpBackend = {
    port: (server.address() as AddressInfo).port,
    served: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
  return backend;
}

/** A cleartext HTTP/2 backend with the same routes as startH1Backend. */
export async function startH2Backend(
  opts: { maxConcurrentStreams?: number } = {},
): Promise<HttpBackend & { sessions: number }> {
  const sockets = new Set<Socket>();
  const server: Http2Server = createH2({
    settings: { maxConcurrentStreams: opts.maxConcurrentStreams ?? 100 },
  });
  server.on('session', () => backend.sessions++);
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    backend.served++;
    stream.on('error', () => {});
    const url = new URL(headers[':path'] ?? '/', 'http://x');
    const port = String(backend.port);
    if (url.pathname === '/echo') {
      stream.respond({ ':status': 200, 'x-backend': port });
      stream.pipe(stream);
      return;
    }
    if (url.pathname === '/headers') {
      stream.resume();
      stream.respond({ ':status': 200, 'x-backend': port });
      stream.end(JSON.stringify(headers));
      return;
    }
    const ms = Number(url.searchParams.get('ms') ?? 0);
    stream.resume();
    const reply = (): void => {
      if (stream.destroyed) return;
      stream.respond({ ':status': 200, 'x-backend': port });
      stream.end(port);
    };
    if (ms > 0) setTimeout(reply, ms);
    else reply();
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const backend = {
    port: (server.address() as AddressInfo).port,
    served: 0,
    sessions: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
  return backend;
}

/** Hand-written service definition: `test.Echo` with unary `Say` and bidi `Chat`, messages as raw bytes. */
const bytes = {
  serialize: (b: Buffer) => b,
  deserialize: (b: Buffer) => b,
};
export const echoService: grpc.ServiceDefinition = {
  say: {
    path: '/test.Echo/Say',
    requestStream: false,
    responseStream: false,
    requestSerialize: bytes.serialize,
    requestDeserialize: bytes.deserialize,
    responseSerialize: bytes.serialize,
    responseDeserialize: bytes.deserialize,
  },
  chat: {
    path: '/test.Echo/Chat',
    requestStream: true,
    responseStream: true,
    requestSerialize: bytes.serialize,
    requestDeserialize: bytes.deserialize,
    responseSerialize: bytes.serialize,
    responseDeserialize: bytes.deserialize,
  },
};
export const EchoClient = grpc.makeGenericClientConstructor(echoService, 'Echo');

/**
 * A gRPC backend: `Say` answers its port (or fails with the status given as
 * the request text `fail` (UNAVAILABLE), or waits for `sleep:MS`); `Chat` echoes each
 * message prefixed with the port.
 */
export async function startGrpcBackend(): Promise<HttpBackend> {
  const server = new grpc.Server();
  const backend: HttpBackend = { port: 0, served: 0, close: async () => server.forceShutdown() };
  server.addService(echoService, {
    say(call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      backend.served++;
      const text = call.request.toString();
      if (text === 'fail') return cb({ code: grpc.status.UNAVAILABLE, details: 'asked to fail' });
      const md = new grpc.Metadata();
      md.set('x-backend', String(backend.port));
      call.sendMetadata(md);
      const reply = (): void => cb(null, Buffer.from(String(backend.port)));
      if (text.startsWith('sleep:')) setTimeout(reply, Number(text.slice(6)));
      else reply();
    },
    chat(call: grpc.ServerDuplexStream<Buffer, Buffer>) {
      backend.served++;
      call.on('data', (m: Buffer) => call.write(Buffer.concat([Buffer.from(`${backend.port}:`), m])));
      call.on('end', () => call.end());
      call.on('error', () => {});
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  (backend as { port: number }).port = port;
  return backend;
}

/** A `protocol: http` gateway in front of one HTTP/1.1 backend, filled in by `useHttpService`'s `before`. */
export interface HttpService {
  backend: HttpBackend;
  gateway: Gateway;
  port: number;
}

/**
 * For a describe block: start one `protocol: http` service named `name` over
 * one HTTP/1.1 backend before its tests, shut both down after. `fields`: more
 * service fields, as YAML lines indented by four spaces; `route`: the
 * backend's own answers (see startH1Backend).
 */
export function useHttpService(name: string, fields = '', route?: H1Route): HttpService {
  const svc = {} as HttpService;
  before(async () => {
    svc.backend = await startH1Backend(route);
    svc.port = await freePort();
    ({ gateway: svc.gateway } = await startGateway(`
services:
  - name: ${name}
    protocol: http
    listen: 127.0.0.1:${svc.port}
${fields}    backends: { static: [127.0.0.1:${svc.backend.port}] }
`));
  });
  after(async () => {
    await svc.gateway.shutdown();
    await svc.backend.close();
  });
  return svc;
}

/** One HTTP/2 request on `session`: its response status, once the body is read. */
export function h2Status(session: ClientHttp2Session, path = '/'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': path });
    req.on('response', (h) => {
      req.resume();
      req.on('end', () => resolve(Number(h[':status'])));
    });
    req.on('error', reject);
  });
}
