/**
 * `backends.kubernetes`: follow the EndpointSlices of a Service.
 *
 * List, then watch from the list's resourceVersion with bookmarks; a 410 Gone
 * (as an HTTP status or as an ERROR event) means our version is too old, so
 * re-list; errors and dropped streams are retried with jittered exponential
 * back-off, from the last version seen. The watch is a plain streaming GET
 * over undici: the generated @kubernetes/client-node pulls in dozens of
 * packages for what is one list and one line-delimited JSON stream here, and
 * its watch hides the details (bookmarks, 410 handling, idle streams) this
 * source has to get right anyway.
 *
 * Conditions: ready (or unset, which the API defines as ready) → active;
 * serving and terminating → draining (kept, takes no new connections, its
 * connections are asked to leave); anything else → removed (drained).
 */
import { request } from 'undici';
import type { BackendSpec } from '../cluster/backend.ts';
import type { Timer } from '../cluster/clock.ts';
import type { KubernetesSourceConfig } from '../config/discovery.ts';
import { kubeAccess, type KubeAccess, KubeConfigError } from './kubeconfig.ts';
import { backoffDelay, type DiscoverySource, type SourceContext } from './source.ts';

/** The parts of a discovery.k8s.io/v1 EndpointSlice this source reads. */
export interface EndpointSlice {
  metadata: { name: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string> };
  addressType?: 'IPv4' | 'IPv6' | 'FQDN';
  endpoints?:
    | {
        addresses: string[];
        conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null };
        targetRef?: { kind?: string; name?: string };
      }[]
    | null;
  ports?: { name?: string | null; port?: number | null; protocol?: string }[] | null;
}

interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: EndpointSlice & { code?: number; message?: string; reason?: string };
}

/** The endpoint set described by a Service's slices, with `port` chosen by name or number. */
export function endpointsOf(
  slices: Iterable<EndpointSlice>,
  port: string | number | undefined,
  problem: (message: string) => void = () => {},
): BackendSpec[] {
  const found = new Map<string, BackendSpec>();
  for (const slice of slices) {
    if (slice.addressType === 'FQDN') continue;
    const ports = (slice.ports ?? []).filter((p) => typeof p.port === 'number');
    const chosen =
      port === undefined
        ? ports.length === 1
          ? ports[0]
          : undefined
        : ports.find((p) => (typeof port === 'number' ? p.port === port : p.name === port));
    if (chosen === undefined) {
      if ((slice.endpoints ?? []).length > 0) {
        problem(
          port === undefined
            ? `EndpointSlice ${slice.metadata.name} has ${ports.length} ports (${ports.map((p) => p.name ?? p.port).join(', ')}); set backends.kubernetes.port to one of them`
            : `EndpointSlice ${slice.metadata.name} has no port ${typeof port === 'number' ? port : `named "${port}"`}`,
        );
      }
      continue;
    }
    for (const ep of slice.endpoints ?? []) {
      const c = ep.conditions ?? {};
      const ready = c.ready !== false && c.terminating !== true;
      const draining = !ready && c.serving === true && c.terminating === true;
      if (!ready && !draining) continue;
      for (const host of ep.addresses) {
        const key = `${host}|${chosen.port}`;
        const prev = found.get(key);
        // The same endpoint in two slices (mid-update): ready wins.
        if (prev !== undefined && prev.draining !== true) continue;
        found.set(key, {
          address: { host, port: chosen.port! },
          weight: 1,
          draining: draining ? true : undefined,
        });
      }
    }
  }
  return [...found.values()];
}

/** Why the current watch ended. */
type WatchEnd = 'expired' | 'gone' | 'error';

export class KubernetesSource implements DiscoverySource {
  readonly kind = 'kubernetes';
  readonly #config: KubernetesSourceConfig;
  readonly #ctx: SourceContext;
  readonly #slices = new Map<string, EndpointSlice>();
  #access: KubeAccess | undefined;
  #namespace = 'default';
  #resourceVersion: string | undefined;
  #abort = new AbortController();
  #timer: Timer | undefined;
  #attempt = 0;
  #stopped = false;
  #lastProblem: string | undefined;
  /** Server-side watch timeout; the client gives up on a silent stream a little after. */
  watchTimeoutSeconds = 290;

  constructor(config: KubernetesSourceConfig, ctx: SourceContext) {
    this.#config = config;
    this.#ctx = ctx;
  }

  start(): void {
    try {
      this.#access = kubeAccess(this.#config.kubeconfig);
    } catch (err) {
      if (!(err instanceof KubeConfigError)) throw err;
      this.#ctx.error('config', err.message);
      // Keep trying: a service account token may be mounted late, a kubeconfig fixed.
      this.#retry();
      return;
    }
    this.#namespace = this.#config.namespace ?? this.#access.namespace ?? 'default';
    void this.#run();
  }

  stop(): void {
    this.#stopped = true;
    this.#timer?.cancel();
    this.#abort.abort();
    void this.#access?.dispatcher.close().catch(() => {});
  }

  #retry(): void {
    if (this.#stopped) return;
    const ms = backoffDelay(this.#attempt++, this.#config.backoff, this.#config.maxBackoff);
    this.#timer = this.#ctx.clock.setTimer(
      () => (this.#access === undefined ? this.start() : void this.#run()),
      ms,
    );
  }

  #url(extra: string): string {
    const selector = encodeURIComponent(`kubernetes.io/service-name=${this.#config.service}`);
    return `${this.#access!.server}/apis/discovery.k8s.io/v1/namespaces/${encodeURIComponent(this.#namespace)}/endpointslices?labelSelector=${selector}${extra}`;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      try {
        if (this.#resourceVersion === undefined) await this.#list();
        const end = await this.#watch();
        if (end === 'gone') {
          this.#ctx.log.info(
            { service: this.#ctx.service, reason: '410 Gone' },
            'kubernetes watch expired; listing again',
          );
          this.#resourceVersion = undefined;
          continue;
        }
        if (end === 'expired') {
          this.#attempt = 0;
          continue;
        }
      } catch (err) {
        if (this.#stopped) return;
        const reason = (err as { reason?: string }).reason ?? 'network';
        this.#ctx.error(reason, `${this.#config.service}: ${(err as Error).message}`);
      }
      // Errors and dropped streams: back off, then watch again from the last version seen.
      this.#retry();
      return;
    }
  }

  async #get(url: string, signal: AbortSignal) {
    const access = this.#access!;
    const res = await request(url, {
      dispatcher: access.dispatcher,
      headers: { accept: 'application/json', ...access.headers() },
      signal,
      headersTimeout: 30_000,
      bodyTimeout: (this.watchTimeoutSeconds + 60) * 1000,
    });
    return res;
  }

  async #list(): Promise<void> {
    const res = await this.#get(this.#url(''), this.#abort.signal);
    const text = await res.body.text();
    if (res.statusCode !== 200) throw apiError(res.statusCode, text, 'list');
    const list = JSON.parse(text) as { metadata?: { resourceVersion?: string }; items?: EndpointSlice[] };
    this.#slices.clear();
    for (const item of list.items ?? []) this.#slices.set(item.metadata.name, item);
    this.#resourceVersion = list.metadata?.resourceVersion;
    this.#emit(`EndpointSlice list (${this.#slices.size} slices)`);
  }

  async #watch(): Promise<WatchEnd> {
    const timeout = this.watchTimeoutSeconds;
    const url = this.#url(
      `&watch=1&allowWatchBookmarks=true&timeoutSeconds=${timeout}&resourceVersion=${encodeURIComponent(this.#resourceVersion ?? '')}`,
    );
    const res = await this.#get(url, this.#abort.signal);
    if (res.statusCode === 410) {
      await res.body.dump();
      return 'gone';
    }
    if (res.statusCode !== 200) throw apiError(res.statusCode, await res.body.text(), 'watch');
    this.#attempt = 0;
    let partial = '';
    try {
      for await (const chunk of res.body) {
        partial += (chunk as Buffer).toString('utf8');
        let nl: number;
        while ((nl = partial.indexOf('\n')) >= 0) {
          const line = partial.slice(0, nl).trim();
          partial = partial.slice(nl + 1);
          if (line === '') continue;
          const end = this.#event(JSON.parse(line) as WatchEvent);
          if (end !== undefined) {
            res.body.destroy();
            return end;
          }
        }
      }
    } catch (err) {
      if (this.#stopped || (err as { reason?: string }).reason !== undefined) throw err;
      // The connection broke (or went silent past bodyTimeout) mid-stream.
      throw Object.assign(new Error(`watch stream dropped: ${(err as Error).message}`), {
        reason: 'dropped',
      });
    }
    if (this.#stopped) return 'expired';
    if (partial.trim() !== '')
      throw Object.assign(new Error('watch stream ended in the middle of an event'), { reason: 'dropped' });
    return 'expired';
  }

  #event(ev: WatchEvent): WatchEnd | undefined {
    const obj = ev.object;
    switch (ev.type) {
      case 'ERROR':
        if (obj.code === 410) return 'gone';
        throw Object.assign(
          new Error(`watch error ${obj.code ?? ''}: ${obj.message ?? obj.reason ?? 'unknown'}`),
          { reason: 'watch-error' },
        );
      case 'BOOKMARK':
        this.#resourceVersion = obj.metadata.resourceVersion ?? this.#resourceVersion;
        return undefined;
      case 'ADDED':
      case 'MODIFIED':
        this.#slices.set(obj.metadata.name, obj);
        break;
      case 'DELETED':
        this.#slices.delete(obj.metadata.name);
        break;
      default:
        return undefined;
    }
    this.#resourceVersion = obj.metadata.resourceVersion ?? this.#resourceVersion;
    this.#emit(`EndpointSlice ${obj.metadata.name} ${ev.type}`);
    return undefined;
  }

  #emit(reason: string): void {
    if (this.#stopped) return;
    let problem: string | undefined;
    const specs = endpointsOf(this.#slices.values(), this.#config.port, (m) => (problem ??= m));
    if (problem !== undefined && problem !== this.#lastProblem) this.#ctx.error('port', problem);
    this.#lastProblem = problem;
    this.#ctx.emit(specs, reason);
  }
}

function apiError(status: number, body: string, what: string): Error {
  let message = body.slice(0, 300);
  try {
    message = (JSON.parse(body) as { message?: string }).message ?? message;
  } catch {
    // not a Status object
  }
  const hint =
    status === 401
      ? ' (the token was refused)'
      : status === 403
        ? ' (RBAC: the service account needs get, list and watch on endpointslices.discovery.k8s.io; see deploy/rbac.yaml)'
        : '';
  return Object.assign(new Error(`${what} EndpointSlices: HTTP ${status}: ${message}${hint}`), {
    reason: `http-${status}`,
  });
}
