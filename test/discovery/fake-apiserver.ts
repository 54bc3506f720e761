/**
 * A test Kubernetes API server on loopback (node:http) that speaks the real
 * EndpointSlice list/watch protocol: a List with metadata.resourceVersion,
 * watch streams of line-delimited {type, object} events from a
 * resourceVersion, BOOKMARK events, 410 Gone for versions older than the
 * compacted history (as an HTTP status or as an ERROR event, both of which
 * real servers send), bearer-token checks, and knobs to drop or slow streams.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { EndpointSlice } from '../../src/discovery/kubernetes.ts';

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK';

interface Watcher {
  res: ServerResponse;
  selector: string;
  namespace: string;
}

export interface Endpoint {
  ip: string;
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
  pod?: string;
}

/** An EndpointSlice as a real cluster serves it (fields a controller sets, including ones holdfast ignores). */
export function slice(
  name: string,
  service: string,
  endpoints: Endpoint[],
  ports: { name?: string; port: number }[],
  namespace = 'default',
): EndpointSlice {
  return {
    kind: 'EndpointSlice',
    apiVersion: 'discovery.k8s.io/v1',
    metadata: {
      name,
      generateName: `${service}-`,
      namespace,
      uid: `uid-${name}`,
      labels: {
        'kubernetes.io/service-name': service,
        'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io',
      },
      ownerReferences: [
        {
          apiVersion: 'v1',
          kind: 'Service',
          name: service,
          uid: `uid-svc-${service}`,
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    addressType: 'IPv4',
    endpoints: endpoints.map((e) => ({
      addresses: [e.ip],
      conditions: {
        ready: e.ready ?? true,
        serving: e.serving ?? e.ready ?? true,
        terminating: e.terminating ?? false,
      },
      targetRef: { kind: 'Pod', namespace, name: e.pod ?? `pod-${e.ip}`, uid: `uid-pod-${e.ip}` },
      nodeName: 'node-1',
      zone: 'zone-a',
    })),
    ports: ports.map((p) => ({ name: p.name ?? '', protocol: 'TCP', port: p.port })),
  } as EndpointSlice;
}

export class FakeApiServer {
  readonly token = 'test-token';
  readonly #server: Server;
  readonly #slices = new Map<string, EndpointSlice>();
  /** Every change, in order, for watches that start from a past version. */
  readonly #history: { rv: number; type: EventType; object: EndpointSlice }[] = [];
  #rv = 100;
  /** Versions at or below this are gone (compacted). */
  compactedBelow = 0;
  /** Answer a too-old watch with HTTP 410 instead of a 200 stream carrying an ERROR event. */
  goneAsStatus = false;
  /** Split each event into chunks of this many bytes, written this many ms apart (a slow stream). */
  slow: { chunk: number; delayMs: number } | undefined;
  /** Answer every request with this status (e.g. 403) while set. */
  failWith: number | undefined;
  readonly #watchers = new Set<Watcher>();
  /** Requests seen: `list` or `watch rv=…`. */
  readonly requests: string[] = [];
  port = 0;

  constructor() {
    this.#server = createServer((req, res) => void this.#handle(req, res));
  }

  get server(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get resourceVersion(): string {
    return String(this.#rv);
  }

  get watchers(): number {
    return this.#watchers.size;
  }

  async start(): Promise<void> {
    this.#server.listen(0, '127.0.0.1');
    await once(this.#server, 'listening');
    this.port = (this.#server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const w of this.#watchers) w.res.destroy();
    this.#server.closeAllConnections();
    this.#server.close();
    await once(this.#server, 'close');
  }

  /** Create or replace a slice (ADDED or MODIFIED), notifying watchers. */
  put(s: EndpointSlice): void {
    const type: EventType = this.#slices.has(s.metadata.name) ? 'MODIFIED' : 'ADDED';
    this.#change(type, s);
  }

  delete(name: string): void {
    const s = this.#slices.get(name);
    if (s !== undefined) this.#change('DELETED', s);
  }

  /** Send a BOOKMARK at the current version to every open watch. */
  bookmark(): void {
    this.#rv++;
    const object = {
      kind: 'EndpointSlice',
      apiVersion: 'discovery.k8s.io/v1',
      metadata: { resourceVersion: String(this.#rv) },
    };
    for (const w of this.#watchers) void this.#send(w.res, { type: 'BOOKMARK', object });
  }

  /** Cut every watch stream, optionally in the middle of an event line. */
  dropStreams(midLine = false): void {
    for (const w of this.#watchers) {
      if (midLine) w.res.write('{"type":"MODIFIED","object":{"kind":"Endpoi');
      w.res.socket?.destroy();
    }
    this.#watchers.clear();
  }

  /** Forget history up to now: any watch from an older version gets 410 Gone. */
  compact(): void {
    this.compactedBelow = this.#rv;
  }

  #change(type: EventType, s: EndpointSlice): void {
    this.#rv++;
    const object = structuredClone({ ...s, metadata: { ...s.metadata, resourceVersion: String(this.#rv) } });
    if (type === 'DELETED') this.#slices.delete(s.metadata.name);
    else this.#slices.set(s.metadata.name, object);
    this.#history.push({ rv: this.#rv, type, object });
    for (const w of this.#watchers)
      if (this.#matches(object, w.namespace, w.selector)) void this.#send(w.res, { type, object });
  }

  #matches(s: EndpointSlice, namespace: string, selector: string): boolean {
    const [key, value] = selector.split('=');
    return (s.metadata.namespace ?? 'default') === namespace && s.metadata.labels?.[key!] === value;
  }

  async #send(res: ServerResponse, event: unknown): Promise<void> {
    const line = Buffer.from(`${JSON.stringify(event)}\n`);
    if (this.slow === undefined) {
      res.write(line);
      return;
    }
    for (let i = 0; i < line.length; i += this.slow.chunk) {
      if (res.destroyed) return;
      res.write(line.subarray(i, i + this.slow.chunk));
      await new Promise((r) => setTimeout(r, this.slow!.delayMs));
    }
  }

  #status(res: ServerResponse, code: number, reason: string, message: string): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        kind: 'Status',
        apiVersion: 'v1',
        metadata: {},
        status: 'Failure',
        message,
        reason,
        code,
      }),
    );
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const m = /^\/apis\/discovery\.k8s\.io\/v1\/namespaces\/([^/]+)\/endpointslices$/.exec(url.pathname);
    if (req.headers.authorization !== `Bearer ${this.token}`)
      return this.#status(res, 401, 'Unauthorized', 'Unauthorized');
    if (m === null)
      return this.#status(res, 404, 'NotFound', 'the server could not find the requested resource');
    if (this.failWith !== undefined) {
      return this.#status(
        res,
        this.failWith,
        'Forbidden',
        'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:default:holdfast" cannot list resource "endpointslices"',
      );
    }
    const namespace = decodeURIComponent(m[1]!);
    const selector = url.searchParams.get('labelSelector') ?? '';
    if (url.searchParams.get('watch') !== '1' && url.searchParams.get('watch') !== 'true') {
      this.requests.push('list');
      const items = [...this.#slices.values()].filter((s) => this.#matches(s, namespace, selector));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          kind: 'EndpointSliceList',
          apiVersion: 'discovery.k8s.io/v1',
          metadata: { resourceVersion: String(this.#rv) },
          items,
        }),
      );
      return;
    }
    const from = Number(url.searchParams.get('resourceVersion') ?? '0');
    this.requests.push(`watch rv=${from} bookmarks=${url.searchParams.get('allowWatchBookmarks')}`);
    if (from < this.compactedBelow) {
      if (this.goneAsStatus)
        return this.#status(
          res,
          410,
          'Expired',
          `too old resource version: ${from} (${this.compactedBelow})`,
        );
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
      res.end(
        `${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from} (${this.compactedBelow})`, reason: 'Expired', code: 410 } })}\n`,
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    const watcher: Watcher = { res, selector, namespace };
    for (const h of this.#history)
      if (h.rv > from && this.#matches(h.object, namespace, selector))
        await this.#send(res, { type: h.type, object: h.object });
    this.#watchers.add(watcher);
    res.on('close', () => this.#watchers.delete(watcher));
  }
}
