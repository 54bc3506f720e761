import type { Socket } from 'node:net';

interface Name {
  address?: string;
  port?: number;
}
interface NameHandle {
  getpeername?(out: Name): number;
  getsockname?(out: Name): number;
}

/**
 * A socket's peer and local addresses, asked of its handle. `socket.remoteAddress`
 * and `localAddress` would cache `{ address, family, port }` objects (and their
 * strings) on the socket for its whole life: ~200 bytes on every connection
 * that stays open for hours (a WebSocket). `_handle` is Node's internal TCP wrap,
 * what those getters read too; where it has no getpeername/getsockname (TLS)
 * the getters are used.
 */
export function socketAddresses(socket: Socket): {
  ip: string | undefined;
  port: number | undefined;
  localIp: string | undefined;
  localPort: number | undefined;
} {
  const handle = (socket as unknown as { _handle?: NameHandle | null })._handle;
  if (typeof handle?.getpeername !== 'function' || typeof handle.getsockname !== 'function') {
    return {
      ip: socket.remoteAddress,
      port: socket.remotePort,
      localIp: socket.localAddress,
      localPort: socket.localPort,
    };
  }
  const peer: Name = {};
  const local: Name = {};
  const peerOk = handle.getpeername(peer) === 0;
  const localOk = handle.getsockname(local) === 0;
  return {
    ip: peerOk ? peer.address : undefined,
    port: peerOk ? peer.port : undefined,
    localIp: localOk ? local.address : undefined,
    localPort: localOk ? local.port : undefined,
  };
}

/** The peer's address only (see `socketAddresses`). */
export function peerIp(socket: Socket): string | undefined {
  const handle = (socket as unknown as { _handle?: NameHandle | null })._handle;
  if (typeof handle?.getpeername !== 'function') return socket.remoteAddress;
  const out: Name = {};
  return handle.getpeername(out) === 0 ? out.address : undefined;
}

/** The server name a TLS client asked for (SNI), on a socket holdfast terminates TLS on; undefined otherwise. */
export function tlsServerName(socket: Socket): string | undefined {
  const name = (socket as Socket & { servername?: string | false | null }).servername;
  return typeof name === 'string' && name !== '' ? name : undefined;
}
