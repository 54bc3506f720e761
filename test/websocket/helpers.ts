/** Shared by the WebSocket integration tests: ws backends, raw frame clients, gateway config. */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { WebSocketServer, WebSocket } from 'ws';

export interface WsBackend {
  readonly port: number;
  readonly server: WebSocketServer;
  /** Open server-side sockets. */
  readonly clients: Set<WebSocket>;
  /** Handshake requests seen (headers), newest last. */
  readonly requests: Record<string, string | string[] | undefined>[];
  close(): Promise<void>;
}

/** A ws echo server that greets each client with `port` so it can tell where it landed. */
export async function startWsBackend(
  opts: { port?: number; autoPong?: boolean; perMessageDeflate?: boolean } = {},
): Promise<WsBackend> {
  const server = new WebSocketServer({
    host: '127.0.0.1',
    port: opts.port ?? 0,
    autoPong: opts.autoPong ?? true,
    perMessageDeflate: opts.perMessageDeflate ?? false,
  });
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const clients = new Set<WebSocket>();
  const requests: Record<string, string | string[] | undefined>[] = [];
  server.on('connection', (ws, req) => {
    clients.add(ws);
    requests.push(req.headers);
    ws.on('close', () => clients.delete(ws));
    ws.on('error', () => {});
    ws.send(`hello from ${port}`);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  return {
    port,
    server,
    clients,
    requests,
    close: async () => {
      for (const c of clients) c.terminate();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Open a ws client through the gateway; resolves with the socket and the backend port it reached. */
export async function openClient(port: number, path = '/'): Promise<{ ws: WebSocket; backend: number }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
  ws.on('error', () => {});
  const [greeting] = (await once(ws, 'message')) as [Buffer];
  const m = /hello from (\d+)/.exec(greeting.toString());
  return { ws, backend: Number(m?.[1]) };
}

export function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve({ code: -1, reason: 'already closed' });
  return new Promise((resolve) =>
    ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })),
  );
}

export function serviceYaml(opts: {
  port: number;
  backends: number[];
  extra?: string;
  admin?: number;
}): string {
  return [
    opts.admin !== undefined ? `admin: { listen: 127.0.0.1:${opts.admin} }` : '',
    'log: { level: warn }',
    'services:',
    '  - name: ws',
    '    protocol: http',
    `    listen: 127.0.0.1:${opts.port}`,
    `    backends: { static: [${opts.backends.map((p) => `127.0.0.1:${p}`).join(', ')}] }`,
    ...(opts.extra ?? '')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => `    ${l}`),
  ].join('\n');
}

/** A raw TCP client that performs the WebSocket handshake itself, to send frames ws would never send. */
export async function rawClient(
  port: number,
  extraHeaders = '',
): Promise<{ socket: Socket; response: string; rest: Buffer }> {
  const socket = connect({ port, host: '127.0.0.1' });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(
    'GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
      `${extraHeaders}\r\n`,
  );
  let got = Buffer.alloc(0);
  for (;;) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    got = Buffer.concat([got, chunk]);
    const end = got.indexOf('\r\n\r\n');
    if (end >= 0) return { socket, response: got.subarray(0, end).toString(), rest: got.subarray(end + 4) };
  }
}

/** Build a client frame (masked unless told otherwise). */
export function frame(
  opcode: number,
  payload: Buffer,
  opts: { fin?: boolean; mask?: boolean; rsv?: number; length?: number } = {},
): Buffer {
  const mask = opts.mask ?? true;
  const len = opts.length ?? payload.length;
  const head: number[] = [((opts.fin ?? true) ? 0x80 : 0) | ((opts.rsv ?? 0) << 4) | opcode];
  const m = mask ? 0x80 : 0;
  if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
  else {
    head.push(m | 127, 0, 0, 0, 0);
    head.push((len >>> 24) & 0xff, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff);
  }
  const key = [0x12, 0x34, 0x56, 0x78];
  const body = Buffer.from(payload);
  if (mask) for (let i = 0; i < body.length; i++) body[i] = body[i]! ^ key[i & 3]!;
  return Buffer.concat([Buffer.from(head), mask ? Buffer.from(key) : Buffer.alloc(0), body]);
}

/** Read server frames from `socket` (after `initial`) until a close frame; resolves with its code, or -1 on EOF. */
export function readCloseCode(
  socket: Socket,
  initial: Buffer = Buffer.alloc(0),
  timeoutMs = 5_000,
): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = initial;
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error('no close frame in time'));
    }, timeoutMs);
    const scan = (): boolean => {
      for (;;) {
        if (buf.length < 2) return false;
        let len = buf[1]! & 0x7f;
        let at = 2;
        if (len === 126) {
          if (buf.length < 4) return false;
          len = buf.readUInt16BE(2);
          at = 4;
        } else if (len === 127) {
          if (buf.length < 10) return false;
          len = Number(buf.readBigUInt64BE(2));
          at = 10;
        }
        if (buf[1]! & 0x80) at += 4;
        if (buf.length < at + len) return false;
        if ((buf[0]! & 0x0f) === 0x8) {
          cleanup();
          resolve(len >= 2 ? buf.readUInt16BE(at) : 1005);
          return true;
        }
        buf = buf.subarray(at + len);
      }
    };
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      scan();
    };
    const onEnd = (): void => {
      cleanup();
      resolve(-1);
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onEnd);
    };
    socket.on('data', onData);
    socket.on('close', onEnd);
    scan();
  });
}
