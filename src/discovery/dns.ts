import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { BackendSpec } from '../cluster/backend.ts';
import type { Timer } from '../cluster/clock.ts';
import type { HostPort } from '../config/address.ts';
import type { DnsSourceConfig } from '../config/discovery.ts';
import { type DnsAnswer, DnsQueryError, type DnsRecord, query, type QueryType } from './dns-client.ts';
import type { DiscoverySource, SourceContext } from './source.ts';

/** The `nameserver` lines of /etc/resolv.conf (127.0.0.1:53 if there are none). */
export function systemNameServers(file = '/etc/resolv.conf'): HostPort[] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    // no resolv.conf: fall through to the default
  }
  const out: HostPort[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    const host = m?.[1]?.replace(/%.*$/, '');
    if (host !== undefined && isIP(host) !== 0) out.push({ host, port: 53 });
  }
  return out.length > 0 ? out : [{ host: '127.0.0.1', port: 53 }];
}

const RCODES: Readonly<Record<number, string>> = {
  1: 'formerr',
  2: 'servfail',
  3: 'nxdomain',
  4: 'notimp',
  5: 'refused',
};

/**
 * `backends.dns`: A/AAAA records of a name (a headless Service) with a fixed
 * port, or SRV records (targets and ports from the records). Re-resolved when
 * the shortest TTL of the answer runs out, kept within
 * [minInterval, maxInterval]. A failed lookup, NXDOMAIN or an empty answer
 * keeps the last good set (DNS is not trusted to empty a service; health
 * checks catch backends that really went away), is logged and counted, and is
 * retried with back-off from minInterval up to maxInterval.
 */
export class DnsSource implements DiscoverySource {
  readonly kind = 'dns';
  readonly #config: DnsSourceConfig;
  readonly #ctx: SourceContext;
  readonly #servers: HostPort[];
  #timer: Timer | undefined;
  #stopped = false;
  #failures = 0;

  constructor(config: DnsSourceConfig, ctx: SourceContext) {
    this.#config = config;
    this.#ctx = ctx;
    this.#servers = config.servers ?? systemNameServers();
  }

  start(): void {
    this.#resolve();
  }

  stop(): void {
    this.#stopped = true;
    this.#timer?.cancel();
  }

  #resolve(): void {
    if (this.#stopped) return;
    this.#lookup().then(
      ({ specs, ttl }) => {
        if (this.#stopped) return;
        this.#failures = 0;
        const { minInterval, maxInterval } = this.#config;
        this.#ctx.emit(specs, `dns ${this.#config.type} answer for ${this.#config.name} (ttl ${ttl}s)`);
        this.#schedule(Math.min(maxInterval, Math.max(minInterval, ttl * 1000)));
      },
      (err: unknown) => {
        if (this.#stopped) return;
        const reason = err instanceof DnsQueryError ? err.reason : 'error';
        this.#ctx.error(reason, `${this.#config.name} ${this.#config.type}: ${(err as Error).message}`);
        const { minInterval, maxInterval } = this.#config;
        this.#schedule(Math.min(maxInterval, minInterval * 2 ** Math.min(this.#failures++, 20)));
      },
    );
  }

  #schedule(ms: number): void {
    this.#timer = this.#ctx.clock.setTimer(() => this.#resolve(), ms);
  }

  /** Ask each name server in turn until one answers. */
  async #ask(name: string, type: QueryType): Promise<DnsAnswer> {
    let last: unknown;
    for (const server of this.#servers) {
      try {
        const answer = await query(server, name, type, this.#config.timeout, this.#ctx.clock);
        if (answer.rcode === 2 || answer.rcode === 5) {
          last = new DnsQueryError(
            RCODES[answer.rcode]!,
            `${server.host}:${server.port} answered ${RCODES[answer.rcode]!.toUpperCase()}`,
          );
          continue;
        }
        return answer;
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  async #addresses(
    name: string,
    type: 'A' | 'AAAA',
    into: { address: string; ttl: number }[],
  ): Promise<void> {
    const answer = await this.#ask(name, type);
    if (answer.rcode !== 0)
      throw new DnsQueryError(
        RCODES[answer.rcode] ?? `rcode-${answer.rcode}`,
        `${name} ${type}: ${RCODES[answer.rcode]?.toUpperCase() ?? `rcode ${answer.rcode}`}`,
      );
    let minCname = Infinity;
    for (const r of answer.answers) if (r.type === 'CNAME') minCname = Math.min(minCname, r.ttl);
    for (const r of answer.answers) {
      if (r.type === type) into.push({ address: r.address, ttl: Math.min(r.ttl, minCname) });
    }
  }

  async #lookup(): Promise<{ specs: BackendSpec[]; ttl: number }> {
    const { name, type } = this.#config;
    const specs: BackendSpec[] = [];
    let ttl = Infinity;
    if (type === 'SRV') {
      const answer = await this.#ask(name, 'SRV');
      if (answer.rcode !== 0)
        throw new DnsQueryError(
          RCODES[answer.rcode] ?? 'error',
          RCODES[answer.rcode]?.toUpperCase() ?? `rcode ${answer.rcode}`,
        );
      const srv = answer.answers.filter((r): r is Extract<DnsRecord, { type: 'SRV' }> => r.type === 'SRV');
      // Only the best (lowest) priority: higher ones are backups by definition.
      const best = Math.min(...srv.map((r) => r.priority));
      for (const r of srv) {
        if (r.priority !== best) continue;
        ttl = Math.min(ttl, r.ttl);
        let addrs: { address: string; ttl: number }[] = [];
        if (isIP(r.target) !== 0) addrs = [{ address: r.target, ttl: r.ttl }];
        else {
          const glue = answer.additional.filter(
            (a) => (a.type === 'A' || a.type === 'AAAA') && a.name.toLowerCase() === r.target.toLowerCase(),
          );
          for (const g of glue)
            if (g.type === 'A' || g.type === 'AAAA') addrs.push({ address: g.address, ttl: g.ttl });
          if (addrs.length === 0) {
            await this.#addresses(r.target, 'A', addrs);
            if (addrs.length === 0) await this.#addresses(r.target, 'AAAA', addrs);
          }
        }
        for (const a of addrs) {
          ttl = Math.min(ttl, a.ttl);
          specs.push({ address: { host: a.address, port: r.port }, weight: Math.max(1, r.weight) });
        }
      }
    } else {
      const addrs: { address: string; ttl: number }[] = [];
      if (type === 'A' || type === 'A+AAAA') await this.#addresses(name, 'A', addrs);
      if (type === 'AAAA' || type === 'A+AAAA') await this.#addresses(name, 'AAAA', addrs);
      for (const a of addrs) {
        ttl = Math.min(ttl, a.ttl);
        specs.push({ address: { host: a.address, port: this.#config.port! }, weight: 1 });
      }
    }
    if (specs.length === 0) throw new DnsQueryError('empty', `no ${type} records for ${name}`);
    // Duplicates (the same address twice) would be one backend anyway.
    const seen = new Set<string>();
    return {
      specs: specs.filter((s) => {
        const k = `${s.address.host}|${s.address.port}`;
        return seen.has(k) ? false : (seen.add(k), true);
      }),
      ttl: Number.isFinite(ttl) ? ttl : 0,
    };
  }
}
