/** Small real-socket helpers shared by the integration tests. */
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** A free TCP port on 127.0.0.1 (bound and released; fine for tests on loopback). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort(host));
  return [...ports];
}

/** A TCP backend that echoes and counts its live connections. */
export interface EchoBackend {
  readonly port: number;
  readonly server: Server;
  readonly sockets: Set<Socket>;
  /** Connections received since start. */
  total: number;
  close(): Promise<void>;
}

/**
 * Start a TCP echo backend. `greet` (default false) writes `port\n` on accept
 * so a client can tell which backend it reached.
 */
export async function startEchoBackend(
  opts: { port?: number; host?: string; greet?: boolean; allowHalfOpen?: boolean } = {},
): Promise<EchoBackend> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: opts.allowHalfOpen ?? false }, (socket) => {
    sockets.add(socket);
    backend.total++;
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    if (opts.greet === true) socket.write(`${backend.port}\n`);
    socket.pipe(socket);
  });
  server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1');
  await once(server, 'listening');
  const backend: EchoBackend = {
    port: (server.address() as AddressInfo).port,
    server,
    sockets,
    total: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
  return backend;
}

/** Open a TCP connection and wait until it is established. */
export async function dial(
  port: number,
  host = '127.0.0.1',
  opts: { localAddress?: string } = {},
): Promise<Socket> {
  const socket = connect({ port, host, ...opts });
  socket.on('error', () => {});
  await once(socket, 'connect');
  return socket;
}

/** Read from a socket until `text` has arrived (or it closes / times out). */
export function readUntil(socket: Socket, text: string, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for ${JSON.stringify(text)}; got ${JSON.stringify(got)}`));
    }, timeoutMs);
    const onData = (d: Buffer): void => {
      got += d.toString();
      if (got.includes(text)) {
        cleanup();
        resolve(got);
      }
    };
    const onEnd = (): void => {
      cleanup();
      reject(new Error(`socket ended before ${JSON.stringify(text)}; got ${JSON.stringify(got)}`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
  });
}

/** Poll `fn` until it returns true or `timeoutMs` passes. */
export async function waitFor(
  fn: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
