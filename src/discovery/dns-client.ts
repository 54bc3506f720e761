/**
 * A small DNS stub client over UDP (falling back to TCP for truncated
 * answers), just enough for service discovery: A, AAAA and SRV with their
 * TTLs. node:dns gives TTLs for A/AAAA only (`{ ttl: true }`), not for SRV,
 * and the source must know how long every answer stays valid; one small
 * client for all three record types keeps the behaviour the same for each.
 */
import { createSocket } from 'node:dgram';
import { connect, isIP } from 'node:net';
import type { Clock } from '../cluster/clock.ts';
import type { HostPort } from '../config/address.ts';

export const RR = { A: 1, CNAME: 5, AAAA: 28, SRV: 33, OPT: 41 } as const;
export type QueryType = 'A' | 'AAAA' | 'SRV';

export type DnsRecord =
  | { type: 'A' | 'AAAA'; name: string; ttl: number; address: string }
  | { type: 'SRV'; name: string; ttl: number; priority: number; weight: number; port: number; target: string }
  | { type: 'CNAME'; name: string; ttl: number; target: string };

export interface DnsAnswer {
  /** 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, … */
  rcode: number;
  answers: DnsRecord[];
  additional: DnsRecord[];
}

/** A DNS query that got no usable answer: `timeout`, `refused` (no server listening), `servfail`, `malformed`, … */
export class DnsQueryError extends Error {
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.reason = reason;
  }
}

/** Encode a query with EDNS0 (4096-byte UDP answers, so big headless Services fit without TCP). */
export function encodeQuery(id: number, name: string, type: QueryType): Buffer {
  const labels = name
    .replace(/\.$/, '')
    .split('.')
    .filter((l) => l !== '');
  const parts: Buffer[] = [];
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2); // RD
  header.writeUInt16BE(1, 4); // QDCOUNT
  header.writeUInt16BE(1, 10); // ARCOUNT: OPT
  parts.push(header);
  for (const l of labels) {
    const b = Buffer.from(l, 'ascii');
    if (b.length > 63)
      throw new DnsQueryError('malformed', `label "${l}" of ${name} is longer than 63 bytes`);
    parts.push(Buffer.from([b.length]), b);
  }
  const tail = Buffer.alloc(5 + 11);
  tail.writeUInt8(0, 0);
  tail.writeUInt16BE(RR[type], 1);
  tail.writeUInt16BE(1, 3); // IN
  // OPT: root name, type 41, class = UDP payload size, TTL 0, RDLEN 0
  tail.writeUInt8(0, 5);
  tail.writeUInt16BE(RR.OPT, 6);
  tail.writeUInt16BE(4096, 8);
  parts.push(tail);
  return Buffer.concat(parts);
}

function readName(buf: Buffer, at: number): [string, number] {
  const labels: string[] = [];
  let i = at;
  let end = -1;
  for (let hops = 0; hops < 64; hops++) {
    const len = buf[i];
    if (len === undefined) throw new DnsQueryError('malformed', 'name runs past the end of the answer');
    if (len === 0) {
      if (end < 0) end = i + 1;
      return [labels.join('.'), end];
    }
    if ((len & 0xc0) === 0xc0) {
      if (end < 0) end = i + 2;
      i = ((len & 0x3f) << 8) | buf[i + 1]!;
      continue;
    }
    labels.push(buf.toString('ascii', i + 1, i + 1 + len));
    i += 1 + len;
  }
  throw new DnsQueryError('malformed', 'name compression loop');
}

/** Parse an answer; records of types other than A, AAAA, SRV and CNAME are skipped. */
export function decodeAnswer(buf: Buffer): { id: number; truncated: boolean; answer: DnsAnswer } {
  if (buf.length < 12) throw new DnsQueryError('malformed', 'answer shorter than a DNS header');
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  const ns = buf.readUInt16BE(8);
  const ar = buf.readUInt16BE(10);
  let i = 12;
  for (let q = 0; q < qd; q++) i = readName(buf, i)[1] + 4;
  const sections: DnsRecord[][] = [[], [], []];
  const counts = [an, ns, ar];
  for (let s = 0; s < 3; s++) {
    for (let r = 0; r < counts[s]!; r++) {
      const [name, next] = readName(buf, i);
      if (next + 10 > buf.length)
        throw new DnsQueryError('malformed', 'record runs past the end of the answer');
      const type = buf.readUInt16BE(next);
      const ttl = buf.readUInt32BE(next + 4);
      const len = buf.readUInt16BE(next + 8);
      const data = next + 10;
      if (data + len > buf.length)
        throw new DnsQueryError('malformed', 'record data runs past the end of the answer');
      i = data + len;
      if (type === RR.A && len === 4) {
        sections[s]!.push({ type: 'A', name, ttl, address: [...buf.subarray(data, data + 4)].join('.') });
      } else if (type === RR.AAAA && len === 16) {
        const groups: string[] = [];
        for (let g = 0; g < 8; g++) groups.push(buf.readUInt16BE(data + 2 * g).toString(16));
        sections[s]!.push({ type: 'AAAA', name, ttl, address: compressV6(groups) });
      } else if (type === RR.SRV && len >= 7) {
        sections[s]!.push({
          type: 'SRV',
          name,
          ttl,
          priority: buf.readUInt16BE(data),
          weight: buf.readUInt16BE(data + 2),
          port: buf.readUInt16BE(data + 4),
          target: readName(buf, data + 6)[0],
        });
      } else if (type === RR.CNAME) {
        sections[s]!.push({ type: 'CNAME', name, ttl, target: readName(buf, data)[0] });
      }
    }
  }
  return {
    id,
    truncated: (flags & 0x0200) !== 0,
    answer: { rcode: flags & 0x0f, answers: sections[0]!, additional: sections[2]! },
  };
}

/** Canonical (RFC 5952) text of an IPv6 address given as 8 hex groups; URL parsing does the compression. */
function compressV6(groups: string[]): string {
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

/** Ask `server` one question. Rejects with DnsQueryError; resolves whatever the rcode. */
export function query(
  server: HostPort,
  name: string,
  type: QueryType,
  timeoutMs: number,
  clock: Clock,
): Promise<DnsAnswer> {
  const id = Math.floor(Math.random() * 0x10000);
  const packet = encodeQuery(id, name, type);
  return new Promise((resolve, reject) => {
    const socket = createSocket(isIP(server.host) === 6 ? 'udp6' : 'udp4');
    let done = false;
    const finish = (err: Error | undefined, answer?: DnsAnswer): void => {
      if (done) return;
      done = true;
      timer.cancel();
      socket.close();
      if (err !== undefined) reject(err);
      else resolve(answer!);
    };
    const timer = clock.setTimer(
      () =>
        finish(
          new DnsQueryError('timeout', `no answer from ${server.host}:${server.port} within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    socket.on('error', (err: NodeJS.ErrnoException) =>
      finish(
        new DnsQueryError(
          err.code === 'ECONNREFUSED' ? 'refused' : 'network',
          `${server.host}:${server.port}: ${err.message}`,
        ),
      ),
    );
    socket.on('message', (msg) => {
      let decoded;
      try {
        decoded = decodeAnswer(msg);
      } catch (err) {
        finish(err as Error);
        return;
      }
      if (decoded.id !== id) return; // not ours: keep waiting
      if (!decoded.truncated) {
        finish(undefined, decoded.answer);
        return;
      }
      queryTcp(server, packet, id).then(
        (a) => finish(undefined, a),
        (err: unknown) => finish(err as Error),
      );
    });
    // Connected, so an ICMP port-unreachable surfaces as ECONNREFUSED at once.
    socket.connect(server.port, server.host, () => socket.send(packet));
  });
}

function queryTcp(server: HostPort, packet: Buffer, id: number): Promise<DnsAnswer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: server.host, port: server.port, timeout: 5_000 });
    socket.on('timeout', () => socket.destroy(new Error('timed out')));
    let got = Buffer.alloc(0);
    socket.on('error', (err) =>
      reject(new DnsQueryError('network', `TCP ${server.host}:${server.port}: ${err.message}`)),
    );
    socket.on('connect', () => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(packet.length);
      socket.write(Buffer.concat([len, packet]));
    });
    socket.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length < 2 || got.length < 2 + got.readUInt16BE(0)) return;
      socket.destroy();
      try {
        const decoded = decodeAnswer(got.subarray(2, 2 + got.readUInt16BE(0)));
        if (decoded.id !== id) throw new DnsQueryError('malformed', 'TCP answer for another query');
        resolve(decoded.answer);
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
    socket.on('close', () =>
      reject(new DnsQueryError('network', `TCP ${server.host}:${server.port} closed before answering`)),
    );
  });
}
