/**
 * A small authoritative DNS server for tests, on 127.0.0.1 (UDP, port chosen
 * by the kernel): A, AAAA and SRV answers with the TTLs the test sets, SRV
 * targets' addresses in the additional section when asked, NXDOMAIN for
 * unknown names. Written for the tests rather than running dnsmasq, so CI
 * needs no Debian package and the test controls TTLs and outages exactly.
 */
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';

export interface ARecord {
  address: string;
  ttl: number;
}
export interface SrvRecord {
  target: string;
  port: number;
  ttl: number;
  priority?: number;
  weight?: number;
  /** Put the target's A records in the additional section. */
  glue?: boolean;
}
export interface Zone {
  A?: Record<string, ARecord[]>;
  AAAA?: Record<string, ARecord[]>;
  SRV?: Record<string, SrvRecord[]>;
}

const TYPES: Record<number, 'A' | 'AAAA' | 'SRV'> = { 1: 'A', 28: 'AAAA', 33: 'SRV' };

function encodeName(name: string): Buffer {
  const parts: Buffer[] = [];
  for (const l of name.replace(/\.$/, '').split('.')) parts.push(Buffer.from([l.length]), Buffer.from(l));
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

function rr(name: string, type: number, ttl: number, data: Buffer): Buffer {
  const head = Buffer.alloc(10);
  head.writeUInt16BE(type, 0);
  head.writeUInt16BE(1, 2);
  head.writeUInt32BE(ttl, 4);
  head.writeUInt16BE(data.length, 8);
  return Buffer.concat([encodeName(name), head, data]);
}

function addressData(address: string): Buffer {
  if (address.includes(':')) {
    const [head = '', tail = ''] = address.split('::');
    const h = head === '' ? [] : head.split(':');
    const t = tail === '' ? [] : tail.split(':');
    const groups = address.includes('::')
      ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
      : h;
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 2 * i));
    return b;
  }
  return Buffer.from(address.split('.').map(Number));
}

export class TestDnsServer {
  zone: Zone;
  /** Questions received, as `TYPE name`. */
  readonly queries: string[] = [];
  #socket: Socket | undefined;
  port = 0;

  constructor(zone: Zone) {
    this.zone = zone;
  }

  async start(port = 0): Promise<void> {
    const socket = createSocket('udp4');
    socket.on('message', (msg, rinfo) => {
      const reply = this.#answer(msg);
      if (reply !== undefined) socket.send(reply, rinfo.port, rinfo.address);
    });
    socket.bind(port, '127.0.0.1');
    await once(socket, 'listening');
    this.port = socket.address().port;
    this.#socket = socket;
  }

  async stop(): Promise<void> {
    const s = this.#socket;
    this.#socket = undefined;
    if (s === undefined) return;
    s.close();
    await once(s, 'close');
  }

  #answer(msg: Buffer): Buffer | undefined {
    if (msg.length < 12) return undefined;
    const id = msg.readUInt16BE(0);
    let i = 12;
    const labels: string[] = [];
    while (msg[i] !== 0 && i < msg.length) {
      labels.push(msg.toString('ascii', i + 1, i + 1 + msg[i]!));
      i += 1 + msg[i]!;
    }
    const question = msg.subarray(12, i + 5);
    const qtype = msg.readUInt16BE(i + 1);
    const name = labels.join('.').toLowerCase();
    const type = TYPES[qtype];
    this.queries.push(`${type ?? qtype} ${name}`);
    const answers: Buffer[] = [];
    const additional: Buffer[] = [];
    const known = Object.values(this.zone).some(
      (t: Record<string, unknown> | undefined) => t?.[name] !== undefined,
    );
    if (type === 'A' || type === 'AAAA') {
      for (const r of this.zone[type]?.[name] ?? [])
        answers.push(rr(name, qtype, r.ttl, addressData(r.address)));
    } else if (type === 'SRV') {
      for (const r of this.zone.SRV?.[name] ?? []) {
        const data = Buffer.alloc(6);
        data.writeUInt16BE(r.priority ?? 0, 0);
        data.writeUInt16BE(r.weight ?? 10, 2);
        data.writeUInt16BE(r.port, 4);
        answers.push(rr(name, 33, r.ttl, Buffer.concat([data, encodeName(r.target)])));
        if (r.glue === true)
          for (const a of this.zone.A?.[r.target] ?? [])
            additional.push(rr(r.target, 1, a.ttl, addressData(a.address)));
      }
    }
    const header = Buffer.alloc(12);
    header.writeUInt16BE(id, 0);
    header.writeUInt16BE(0x8400 | 0x0100 | (known ? 0 : 3), 2); // QR AA RD, NOERROR or NXDOMAIN
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answers.length, 6);
    header.writeUInt16BE(additional.length, 10);
    return Buffer.concat([header, question, ...answers, ...additional]);
  }
}
