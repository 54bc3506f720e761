import { isIP } from 'node:net';

/** A host and port: `127.0.0.1:7000`, `[::1]:7000`, `backend.svc:8080`. */
export interface HostPort {
  /** IP literal (IPv6 without brackets) or DNS name. */
  readonly host: string;
  readonly port: number;
}

/** Parse `host:port` / `[v6]:port`. Returns an error message instead of throwing. */
export function parseHostPort(text: string): HostPort | string {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0 || text[end + 1] !== ':') return `"${text}" is not host:port (IPv6 is written [::1]:7000)`;
    host = text.slice(1, end);
    portText = text.slice(end + 2);
    if (isIP(host) !== 6) return `"${host}" is not an IPv6 address`;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon <= 0) return `"${text}" is not host:port (for example 127.0.0.1:7000)`;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return `"${text}": write IPv6 addresses in brackets, as [${host}]:${portText}`;
  }
  if (!/^\d{1,5}$/.test(portText)) return `port "${portText}" in "${text}" is not a number`;
  const port = Number(portText);
  if (port < 1 || port > 65535) return `port ${port} in "${text}" is outside 1-65535`;
  return { host, port };
}

/** Render a host and port the way users write it. */
export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}
