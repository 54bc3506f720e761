/**
 * `node bench/_soak.ts [--minutes 4] [--seed N] [--netns] [--warmup 15]`
 *
 * A soak under failure: one gateway process (the launcher's flags, from
 * src/, with bench/lib/gc-on-signal.mjs preloaded) in front of backends that
 * are child processes (bench/_soak-backend.ts), with moderate load from this
 * process on every plane:
 *
 * - `web` (protocol: http, cleartext) and `webtls` (the same with tls:):
 *   HTTP/1.1 and HTTP/2 clients, and WebSockets, over HTTP/1.1 backends;
 * - `grpc` (upstream: { protocol: http2 }): unary calls and bidi streams;
 * - `tcp`: echo connections, long-held and short.
 *
 * For `--minutes`, at random: backends are killed with SIGKILL and started
 * again, frozen with SIGSTOP and thawed, the gateway is reloaded (SIGHUP)
 * with a changed config (backends added and removed, timeouts changed,
 * health checks on and off), and misbehaving clients abort mid-head,
 * mid-body, mid-response and mid-upgrade, send garbage, or cancel. With
 * `--netns` (root, ip, nft) clients in a network namespace also vanish
 * without a FIN: their packets are dropped and the namespace deleted.
 *
 * Then the load stops and the verdict is printed: the gateway did not exit
 * or write to stderr, logged nothing at error level, its open file
 * descriptors came back to where they started (less the HTTP/2 upstream
 * sessions it keeps), its live-connection gauges to 0, and its resident
 * memory after a forced settle (full GC via SIGUSR2, malloc_trim via gdb) is
 * within a small margin of the settled reading after warm-up; and every
 * request was answered: 2xx, or a proxy error with its status and
 * x-holdfast-error (grpc-status UNAVAILABLE / DEADLINE_EXCEEDED for gRPC),
 * never a hang (clients use finite timeouts and count what ran out).
 *
 * Not part of `npm test`. Hold the bench lock: `flock -o
 * /tmp/holdfast-bench.lock node bench/_soak.ts`. Exit status 1 when the
 * verdict fails.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import WebSocket from 'ws';
import { freePorts } from '../test/helpers/net.ts';
import { makeCert } from '../test/helpers/tls.ts';
import { EchoClient } from '../test/http/backends.ts';
import { GC_ON_SIGNAL, LAUNCHER_FLAGS, mallocTrim, ROOT, rssBytes, waitForPort } from './lib/peers.ts';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '4' },
    seed: { type: 'string' },
    netns: { type: 'boolean', default: false },
    warmup: { type: 'string', default: '15' },
  },
});
const NODE = process.execPath;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// A small seeded PRNG (mulberry32), so that a run can be repeated.
let seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
function random(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const seedText = String(seed);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
const between = (lo: number, hi: number): number => lo + random() * (hi - lo);

// ─── results ────────────────────────────────────────────────────────────────

/** Per client kind: outcome → count. Outcomes starting with `BAD` or `HANG` fail the verdict. */
const tally = new Map<string, Map<string, number>>();
const samples = new Map<string, string>();
function count(kind: string, outcome: string, detail?: string): void {
  let m = tally.get(kind);
  if (m === undefined) tally.set(kind, (m = new Map<string, number>()));
  m.set(outcome, (m.get(outcome) ?? 0) + 1);
  if (detail !== undefined && !samples.has(`${kind} ${outcome}`)) samples.set(`${kind} ${outcome}`, detail);
}
const events: string[] = [];
const t0 = performance.now();
function note(what: string): void {
  events.push(`${((performance.now() - t0) / 1000).toFixed(1)}s ${what}`);
}

// ─── backends ───────────────────────────────────────────────────────────────

type Kind = 'h1' | 'grpc' | 'tcp';
class Backend {
  child: ChildProcess | undefined;
  state: 'up' | 'down' | 'stopped' = 'down';
  readonly kind: Kind;
  readonly port: number;
  constructor(kind: Kind, port: number) {
    this.kind = kind;
    this.port = port;
  }
  get name(): string {
    return `${this.kind}:${this.port}`;
  }
  async start(): Promise<void> {
    const child = spawn(NODE, [join(ROOT, 'bench/_soak-backend.ts'), this.kind, String(this.port)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    this.child = child;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`backend ${this.name} exited (${code}) before ready`)));
    });
    child.removeAllListeners('exit');
    this.state = 'up';
  }
  kill9(): void {
    if (this.child === undefined) return;
    if (this.state === 'stopped') this.child.kill('SIGCONT');
    this.child.kill('SIGKILL');
    this.child = undefined;
    this.state = 'down';
  }
  stop(): void {
    if (this.state !== 'up') return;
    this.child!.kill('SIGSTOP');
    this.state = 'stopped';
  }
  cont(): void {
    if (this.state !== 'stopped') return;
    this.child!.kill('SIGCONT');
    this.state = 'up';
  }
}

// ─── ports, certificate, config ─────────────────────────────────────────────

const ports = await freePorts(5 + 9);
const [webPort, tlsPort, grpcPort, tcpPort, adminPort] = ports as [number, number, number, number, number];
const backendPorts = ports.slice(5);
const backends = {
  h1: backendPorts.slice(0, 3).map((p) => new Backend('h1', p)),
  grpc: backendPorts.slice(3, 6).map((p) => new Backend('grpc', p)),
  tcp: backendPorts.slice(6, 9).map((p) => new Backend('tcp', p)),
};
const allBackends = [...backends.h1, ...backends.grpc, ...backends.tcp];
const made = makeCert();
if (typeof made === 'string') throw new Error(made);
const cert = made;
const dir = mkdtempSync(join(tmpdir(), 'holdfast-soak-'));
const configFile = join(dir, 'holdfast.yaml');

// The namespace whose clients vanish: the gateway also listens on the host end of its veth.
const NS = { ns: 'hfsoak', hostSide: 'hfsoak0', nsSide: 'hfsoak1', hostIp: '10.213.7.1', nsIp: '10.213.7.2' };

interface Knobs {
  members: Record<Kind, Set<number>>;
  requestTimeout: string;
  health: boolean;
  wsPing: string;
  maxAge: string;
  drain: string;
}
const knobs: Knobs = {
  members: {
    h1: new Set(backends.h1.slice(0, 2).map((b) => b.port)),
    grpc: new Set(backends.grpc.slice(0, 2).map((b) => b.port)),
    tcp: new Set(backends.tcp.slice(0, 2).map((b) => b.port)),
  },
  requestTimeout: '3s',
  health: false,
  wsPing: '{ interval: 2s, timeout: 1s }',
  maxAge: 'off',
  drain: '3s',
};
const initialKnobs = structuredClone(knobs);

function renderConfig(k: Knobs): string {
  const list = (kind: Kind): string => `[${[...k.members[kind]].map((p) => `127.0.0.1:${p}`).join(', ')}]`;
  const listen = (port: number, nsPort?: number): string =>
    values.netns && nsPort !== undefined
      ? `[127.0.0.1:${port}, ${NS.hostIp}:${nsPort}]`
      : `127.0.0.1:${port}`;
  const health = (type: string, extra = ''): string =>
    k.health
      ? `    health: { type: ${type}, interval: 300ms, timeout: 200ms, unhealthyThreshold: 2, healthyThreshold: 1${extra} }\n`
      : '';
  const http = (name: string, port: number, tls: boolean): string =>
    `  - name: ${name}
    protocol: http
    listen: ${listen(port, tls ? undefined : port)}
    backends: { static: ${list('h1')} }
    timeouts: { connect: 1s }
    tcpKeepAlive: 2s
    drain: { timeout: ${k.drain} }
    httpTimeouts: { request: ${k.requestTimeout}, clientIdle: 20s }
    http2: { ping: { interval: 2s, timeout: 1s } }
    websocket: { ping: ${k.wsPing}, closeTimeout: 1s }
    maxConnectionAge: ${k.maxAge}
    outlierDetection: { consecutiveFailures: 3, consecutive5xx: 0, baseEjectionTime: 1s, maxEjectionTime: 3s }
${tls ? `    tls: { cert: ${cert.cert}, key: ${cert.key} }\n` : ''}${health('http', ', path: /health')}`;
  return `admin: { listen: 127.0.0.1:${adminPort} }
log: { level: info }
services:
${http('web', webPort, false)}${http('webtls', tlsPort, true)}  - name: grpc
    protocol: http
    listen: 127.0.0.1:${grpcPort}
    upstream: { protocol: http2, sessionsPerBackend: 2 }
    backends: { static: ${list('grpc')} }
    timeouts: { connect: 1s }
    tcpKeepAlive: 2s
    drain: { timeout: ${k.drain} }
    httpTimeouts: { request: ${k.requestTimeout}, clientIdle: 20s }
    http2: { ping: { interval: 2s, timeout: 1s } }
    maxConnectionAge: ${k.maxAge}
${health('tcp')}  - name: tcp
    protocol: tcp
    listen: ${listen(tcpPort, tcpPort)}
    backends: { static: ${list('tcp')} }
    timeouts: { connect: 1s, idle: 15s }
    tcpKeepAlive: 2s
    drain: { timeout: ${k.drain} }
${health('tcp')}`;
}

// ─── the gateway ────────────────────────────────────────────────────────────

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}
const logsByMsg = new Map<string, { level: number; n: number; first: LogLine }>();
let gatewayStderr = '';
let gatewayExit: string | undefined;

function startGateway(): ChildProcess {
  writeFileSync(configFile, renderConfig(knobs));
  const flags = LAUNCHER_FLAGS.split(' ');
  const child = spawn(
    NODE,
    [
      ...flags,
      '--import',
      GC_ON_SIGNAL,
      join(ROOT, 'src/cli/main.ts'),
      'serve',
      '--config',
      configFile,
      '--json',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MALLOC_ARENA_MAX: '1' } },
  );
  let partial = '';
  child.stdout.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      let rec: LogLine;
      try {
        rec = JSON.parse(line) as LogLine;
      } catch {
        rec = { level: 60, msg: `unparsable log line: ${line}` };
      }
      const key = `${rec.level >= 50 ? 'ERROR' : rec.level >= 40 ? 'warn' : 'info'} ${rec.msg}`;
      const e = logsByMsg.get(key);
      if (e === undefined) logsByMsg.set(key, { level: rec.level, n: 1, first: rec });
      else e.n++;
      if (rec.msg === 'reload rejected; the running config stays') note(`RELOAD REJECTED ${String(rec.err)}`);
    }
  });
  child.stderr.on('data', (d: Buffer) => (gatewayStderr += d.toString()));
  child.once('exit', (code, signal) => {
    gatewayExit = `code ${code} signal ${signal}`;
    note(`GATEWAY EXITED: ${gatewayExit}`);
  });
  return child;
}

function reload(gw: ChildProcess): void {
  writeFileSync(configFile, renderConfig(knobs));
  gw.kill('SIGHUP');
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The gateway's TCP sockets (ss), for the verdict's evidence. */
function gatewaySockets(pid: number): string[] {
  const r = spawnSync('ss', ['-tanpH'], { encoding: 'utf8' });
  return r.stdout.split('\n').filter((l) => l.includes(`pid=${pid},`));
}

function admin(path: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: adminPort, path, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`admin ${path} timed out`)));
    req.end();
  });
}

async function metrics(): Promise<Map<string, number>> {
  const text = await admin('/metrics');
  const sums = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m === null) continue;
    sums.set(m[1]!, (sums.get(m[1]!) ?? 0) + Number(m[3]));
    if (m[2] !== undefined) sums.set(m[1]! + m[2], Number(m[3]));
  }
  return sums;
}

const LIVE_GAUGES = [
  'holdfast_backend_connections',
  'holdfast_service_connections',
  'holdfast_relay_legs',
  'holdfast_read_buffers_owned',
];

// ─── clients ────────────────────────────────────────────────────────────────

let loadOn = true;
const HANG_MS = 12_000;
const PROXY_ERRORS = new Set([502, 503, 504]);
/** Client sockets and sessions to close when the load stops. */
const closers = new Set<() => void>();

function judgeHttp(
  kind: string,
  status: number,
  headers: Record<string, unknown>,
  body: string,
  path: string,
): void {
  if (status === 200) {
    count(kind, 'ok');
    return;
  }
  const reason = headers['x-holdfast-error'];
  if (PROXY_ERRORS.has(status) && typeof reason === 'string') count(kind, `${status} ${reason}`);
  else
    count(
      kind,
      `BAD status ${status}`,
      `${path} → ${status} ${JSON.stringify(headers)} ${body.slice(0, 200)}`,
    );
}

const h1Agent = new HttpAgent({ keepAlive: true, maxSockets: 4 });
const h1sAgent = new HttpsAgent({ keepAlive: true, maxSockets: 4, rejectUnauthorized: false });

function randomPath(): { method: string; path: string; body?: Buffer } {
  const r = random();
  if (r < 0.5) return { method: 'GET', path: '/' };
  if (r < 0.7)
    return { method: 'POST', path: '/echo', body: Buffer.alloc(Math.floor(between(1, 200_000)), 'b') };
  if (r < 0.85) return { method: 'GET', path: `/slow?ms=${Math.floor(between(10, 1500))}` };
  return { method: 'GET', path: `/big?kb=${pick([16, 64, 256])}` };
}

/** One HTTP/1.1 request; `tls` via https. */
function h1Once(tls: boolean): Promise<void> {
  const kind = tls ? 'h1-tls' : 'h1';
  const { method, path, body } = randomPath();
  return new Promise<void>((resolve) => {
    let done = false;
    const finish = (outcome?: string, detail?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (outcome !== undefined) count(kind, outcome, detail);
      resolve();
    };
    const make = tls ? httpsRequest : httpRequest;
    const req = make(
      {
        host: '127.0.0.1',
        port: tls ? tlsPort : webPort,
        method,
        path,
        agent: tls ? h1sAgent : h1Agent,
        headers: body !== undefined ? { 'content-length': String(body.length) } : {},
      },
      (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          judgeHttp(kind, res.statusCode!, res.headers, Buffer.concat(chunks).toString(), path);
          if (res.statusCode === 200 && body !== undefined && Buffer.concat(chunks).length !== body.length)
            count(kind, 'BAD echo length', `${path} sent ${body.length} got ${Buffer.concat(chunks).length}`);
          finish();
        });
        res.on('error', (e) => finish(`aborted after head (${res.statusCode})`, `${path}: ${e.message}`));
        res.on('aborted', () => finish(`aborted after head (${res.statusCode})`, path));
      },
    );
    const timer = setTimeout(() => {
      finish('HANG', `${method} ${path}`);
      req.destroy();
    }, HANG_MS);
    req.on('error', (e: NodeJS.ErrnoException) =>
      finish(`conn error ${e.code ?? e.message}`, `${path}: ${e.message}`),
    );
    req.end(body);
  });
}

/** HTTP/2 clients: one session at a time, re-opened when it ends. */
function h2Loop(tls: boolean, concurrency: number): Promise<void> {
  const kind = tls ? 'h2-tls' : 'h2';
  let session: ClientHttp2Session | undefined;
  const getSession = (): ClientHttp2Session => {
    if (session !== undefined && !session.closed && !session.destroyed) return session;
    const s = tls
      ? h2connect(`https://127.0.0.1:${tlsPort}`, { rejectUnauthorized: false })
      : h2connect(`http://127.0.0.1:${webPort}`);
    s.on('error', (e: NodeJS.ErrnoException) => count(kind, `session error ${e.code ?? e.message}`));
    s.on('goaway', (code) => count(kind, `goaway ${code}`));
    const close = (): void => s.destroy();
    closers.add(close);
    s.on('close', () => closers.delete(close));
    session = s;
    return s;
  };
  const once1 = (): Promise<void> =>
    new Promise<void>((resolve) => {
      const { method, path, body } = randomPath();
      let done = false;
      let status = 0;
      const finish = (outcome?: string, detail?: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (outcome !== undefined) count(kind, outcome, detail);
        resolve();
      };
      let req;
      try {
        req = getSession().request({ ':method': method, ':path': path }, { endStream: body === undefined });
      } catch (e) {
        session = undefined;
        finish(`request threw ${(e as Error).message}`);
        return;
      }
      const timer = setTimeout(() => {
        finish('HANG', `${method} ${path} status ${status}`);
        req.close();
      }, HANG_MS);
      let headers: Record<string, unknown> = {};
      const chunks: Buffer[] = [];
      req.on('response', (h) => {
        headers = h;
        status = Number(h[':status']);
      });
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => {
        // The driver destroys its sessions when the load stops: streams in flight end then.
        if (status === 0 && !loadOn) return finish('ended by the driver at stop');
        if (status === 0) {
          note(
            `${kind} stream ${req.id} ended without a response head (rst ${req.rstCode}): ${method} ${path}`,
          );
          return finish('BAD ended without head', `${method} ${path} rst ${req.rstCode}`);
        }
        judgeHttp(kind, status, headers, Buffer.concat(chunks).toString(), path);
        finish();
      });
      req.on('error', (e: NodeJS.ErrnoException) =>
        finish(
          status === 0 ? `stream error ${e.code ?? e.message}` : `aborted after head (${status})`,
          `${path}: ${e.message}`,
        ),
      );
      req.on('close', () => {
        if (!done)
          finish(
            status === 0 ? `stream closed ${req.rstCode}` : `closed after head (${status}) ${req.rstCode}`,
          );
      });
      if (body !== undefined) req.end(body);
    });
  return Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (loadOn) {
        await once1();
        await sleep(between(20, 150));
      }
    }),
  ).then(() => session?.close());
}

/** WebSockets: each sends a message every ~300 ms and waits for its echo; reconnects when closed. */
async function wsLoop(tls: boolean): Promise<void> {
  const kind = tls ? 'ws-tls' : 'ws';
  while (loadOn) {
    await new Promise<void>((resolve) => {
      const ws = new WebSocket(tls ? `wss://127.0.0.1:${tlsPort}/ws` : `ws://127.0.0.1:${webPort}/ws`, {
        rejectUnauthorized: false,
        perMessageDeflate: false,
        handshakeTimeout: HANG_MS,
      });
      const close = (): void => ws.close(1000);
      closers.add(close);
      let waiting: { text: string; timer: NodeJS.Timeout } | undefined;
      let sender: NodeJS.Timeout | undefined;
      const end = (): void => {
        closers.delete(close);
        clearInterval(sender);
        if (waiting !== undefined) clearTimeout(waiting.timer);
        resolve();
      };
      ws.on('unexpected-response', (_req, res) => {
        judgeHttp(`${kind}-upgrade`, res.statusCode!, res.headers, '', '/ws');
        res.resume();
        ws.terminate();
      });
      ws.on('open', () => {
        count(`${kind}-upgrade`, 'ok');
        let n = 0;
        sender = setInterval(() => {
          if (waiting !== undefined || ws.readyState !== WebSocket.OPEN) return;
          const text = `m${n++}-${'x'.repeat(Math.floor(between(1, 4000)))}`;
          waiting = {
            text,
            timer: setTimeout(() => {
              count(kind, 'HANG', 'echo not back');
              ws.terminate();
            }, HANG_MS),
          };
          ws.send(text);
        }, 300);
      });
      ws.on('message', (data) => {
        if (waiting === undefined) return count(kind, 'BAD unexpected message');
        if ((data as Buffer).toString() !== waiting.text) count(kind, 'BAD echo mismatch');
        else count(kind, 'ok');
        clearTimeout(waiting.timer);
        waiting = undefined;
      });
      ws.on('error', (e: NodeJS.ErrnoException) => count(kind, `error ${e.code ?? e.message.slice(0, 60)}`));
      ws.on('close', (code) => {
        count(kind, `closed ${code}`);
        end();
      });
    });
    await sleep(between(100, 500));
  }
}

type EchoStub = grpc.Client & {
  say(
    req: Buffer,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (e: grpc.ServiceError | null, r?: Buffer) => void,
  ): grpc.ClientUnaryCall;
  chat(opts?: grpc.CallOptions): grpc.ClientDuplexStream<Buffer, Buffer>;
};

function newEcho(): EchoStub {
  return new EchoClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure()) as unknown as EchoStub;
}

function judgeGrpc(kind: string, err: grpc.ServiceError | null, expectDeadline: boolean): void {
  if (err === null) return count(kind, 'ok');
  const reason = err.metadata?.get('x-holdfast-error')[0];
  if (err.code === grpc.status.CANCELLED) return count(kind, 'cancelled by client');
  if (err.code === grpc.status.DEADLINE_EXCEEDED && (expectDeadline || reason !== undefined))
    return count(kind, `DEADLINE_EXCEEDED ${String(reason ?? 'local')}`);
  if (err.code === grpc.status.UNAVAILABLE && reason !== undefined)
    return count(kind, `UNAVAILABLE ${String(reason)}`);
  count(kind, `BAD ${grpc.status[err.code]} ${String(reason ?? '')}`, err.message);
}

async function grpcUnaryLoop(client: EchoStub): Promise<void> {
  while (loadOn) {
    await new Promise<void>((resolve) => {
      // A few calls carry a short deadline and a slow answer: the gateway must say DEADLINE_EXCEEDED.
      const short = random() < 0.1;
      const text = short ? 'sleep:2000' : random() < 0.2 ? `sleep:${Math.floor(between(10, 800))}` : 'hi';
      const opts: grpc.CallOptions = short ? { deadline: Date.now() + 500 } : {};
      let done = false;
      const call = client.say(Buffer.from(text), new grpc.Metadata(), opts, (err) => {
        done = true;
        clearTimeout(timer);
        judgeGrpc('grpc-unary', err, short);
        resolve();
      });
      const timer = setTimeout(() => {
        if (done) return;
        count('grpc-unary', 'HANG', text);
        call.cancel();
      }, HANG_MS);
    });
    await sleep(between(20, 100));
  }
}

async function grpcChatLoop(client: EchoStub): Promise<void> {
  while (loadOn) {
    await new Promise<void>((resolve) => {
      const call = client.chat();
      let waiting: { text: string; timer: NodeJS.Timeout } | undefined;
      let n = 0;
      let finished = false;
      const close = (): void => void call.end();
      closers.add(close);
      const sendNext = (): void => {
        if (finished) return;
        if (!loadOn || n >= 20 + Math.floor(random() * 20)) return void call.end();
        const text = `c${n++}`;
        waiting = {
          text,
          timer: setTimeout(() => {
            count('grpc-chat', 'HANG', 'message not echoed');
            call.cancel();
          }, HANG_MS),
        };
        call.write(Buffer.from(text));
      };
      call.on('data', (m: Buffer) => {
        if (waiting === undefined || m.toString() !== waiting.text) count('grpc-chat', 'BAD echo mismatch');
        else count('grpc-chat', 'ok');
        if (waiting !== undefined) clearTimeout(waiting.timer);
        waiting = undefined;
        setTimeout(sendNext, 200);
      });
      call.on('error', (e: grpc.ServiceError) => {
        finished = true;
        judgeGrpc('grpc-chat-end', e, false);
      });
      call.on('status', (s: grpc.StatusObject) => {
        finished = true;
        if (waiting !== undefined) clearTimeout(waiting.timer);
        closers.delete(close);
        if (s.code === grpc.status.OK) count('grpc-chat-end', 'ok');
        resolve();
      });
      sendNext();
    });
    await sleep(between(50, 300));
  }
}

/** TCP: echo round-trips on a connection held for a while, then closed; reconnect. */
async function tcpLoop(): Promise<void> {
  while (loadOn) {
    await new Promise<void>((resolve) => {
      const s = tcpConnect({ host: '127.0.0.1', port: tcpPort });
      const close = (): void => void s.end();
      closers.add(close);
      let expect = '';
      let got = '';
      let rounds = Math.floor(between(1, 50));
      let timer: NodeJS.Timeout | undefined;
      let closed = false;
      const sendOne = (): void => {
        // The next round can be due after the gateway closed the connection (a drain, a reset).
        if (closed) return;
        if (!loadOn || rounds-- <= 0) return void s.end();
        expect = `t${rounds}-${'y'.repeat(Math.floor(between(1, 8000)))}|`;
        got = '';
        timer = setTimeout(() => {
          count('tcp', 'HANG', 'echo not back');
          // Both ends as the kernel sees them, with timers and queues (an orphaned socket has no pid).
          const seen = spawnSync('ss', ['-tanpoH'], { encoding: 'utf8' })
            .stdout.split('\n')
            .filter((l) => l.includes(`:${local} `))
            .map((l) => l.replace(/\s+/g, ' '));
          note(
            `tcp HANG from local port ${local}, read ${s.bytesRead} of the echo; sockets: ${seen.join(' | ')}`,
          );
          s.destroy();
        }, HANG_MS);
        s.write(expect);
      };
      let local = 0;
      s.on('connect', () => {
        local = s.localPort ?? 0;
        sendOne();
      });
      s.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.length < expect.length) return;
        clearTimeout(timer);
        count('tcp', got === expect ? 'ok' : 'BAD echo mismatch');
        setTimeout(sendOne, between(50, 300));
      });
      s.on('error', (e: NodeJS.ErrnoException) => count('tcp', `error ${e.code ?? e.message}`));
      s.on('close', () => {
        closed = true;
        clearTimeout(timer);
        closers.delete(close);
        resolve();
      });
    });
    await sleep(between(50, 300));
  }
}

async function loop(fn: () => Promise<void>, pause: [number, number]): Promise<void> {
  while (loadOn) {
    await fn();
    await sleep(between(...pause));
  }
}

// ─── misbehaving clients ────────────────────────────────────────────────────

/** A raw socket to `port` (TLS when asked) that is sent `data` and then destroyed, or left to the gateway. */
async function rawClient(
  port: number,
  tls: boolean,
  data: Buffer | string,
  afterMs: number,
  how: 'destroy' | 'reset' | 'end',
): Promise<void> {
  const s: Socket = tls
    ? tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] })
    : tcpConnect({ host: '127.0.0.1', port });
  s.on('error', () => {});
  s.on('data', () => {});
  await Promise.race([once(s, tls ? 'secureConnect' : 'connect'), sleep(3000)]).catch(() => {});
  s.write(data);
  await sleep(afterMs);
  if (how === 'reset' && !tls) s.resetAndDestroy();
  else if (how === 'end') s.end();
  else s.destroy();
}

const misbehaviours: [string, () => Promise<void>][] = [
  [
    'abort mid-head',
    () =>
      rawClient(
        pick([webPort, tlsPort]),
        random() < 0.5,
        'GET / HTTP/1.1\r\nHost: x\r\nX-A: ',
        between(0, 200),
        pick(['destroy', 'reset', 'end']),
      ),
  ],
  [
    'abort mid-body',
    async () => {
      const tls = random() < 0.5;
      await rawClient(
        tls ? tlsPort : webPort,
        tls,
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n${'z'.repeat(3000)}`,
        between(0, 500),
        pick(['destroy', 'reset', 'end']),
      );
    },
  ],
  [
    'abort mid-chunked-body',
    () =>
      rawClient(
        webPort,
        false,
        'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nabc',
        between(0, 500),
        pick(['destroy', 'reset']),
      ),
  ],
  [
    'abort mid-response',
    async () => {
      const tls = random() < 0.5;
      await rawClient(
        tls ? tlsPort : webPort,
        tls,
        'GET /big?kb=1024 HTTP/1.1\r\nHost: x\r\n\r\n',
        between(0, 50),
        pick(['destroy', 'reset']),
      );
    },
  ],
  [
    'abort mid-upgrade',
    () =>
      rawClient(
        webPort,
        false,
        'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        between(0, 30),
        pick(['destroy', 'reset', 'end']),
      ),
  ],
  [
    'upgrade then garbage frames',
    () =>
      rawClient(
        webPort,
        false,
        Buffer.concat([
          Buffer.from(
            'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
          ),
          Buffer.from(Array.from({ length: 64 }, () => Math.floor(random() * 256))),
        ]),
        between(100, 1000),
        'destroy',
      ),
  ],
  [
    'garbage http',
    () =>
      rawClient(
        webPort,
        false,
        Buffer.from(Array.from({ length: 300 }, () => Math.floor(random() * 256))),
        300,
        pick(['destroy', 'end']),
      ),
  ],
  [
    'garbage tls',
    () =>
      rawClient(
        tlsPort,
        false,
        Buffer.from(Array.from({ length: 300 }, () => Math.floor(random() * 256))),
        300,
        pick(['destroy', 'end']),
      ),
  ],
  [
    'h2 preface then garbage',
    () =>
      rawClient(
        pick([webPort, grpcPort]),
        false,
        Buffer.concat([
          Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
          Buffer.from(Array.from({ length: 200 }, () => Math.floor(random() * 256))),
        ]),
        300,
        pick(['destroy', 'end']),
      ),
  ],
  [
    'h2 abort mid-body',
    async () => {
      const tls = random() < 0.5;
      const s = tls
        ? h2connect(`https://127.0.0.1:${tlsPort}`, { rejectUnauthorized: false })
        : h2connect(`http://127.0.0.1:${webPort}`);
      s.on('error', () => {});
      const req = s.request({ ':method': 'POST', ':path': '/echo', 'content-length': '100000' });
      req.on('error', () => {});
      req.write(Buffer.alloc(5000));
      await sleep(between(0, 300));
      if (random() < 0.5) req.close(0x8);
      else s.destroy();
      await sleep(100);
      s.destroy();
    },
  ],
  [
    'garbage tcp',
    () =>
      rawClient(
        tcpPort,
        false,
        Buffer.from(Array.from({ length: 3000 }, () => Math.floor(random() * 256))),
        between(0, 300),
        pick(['destroy', 'reset', 'end']),
      ),
  ],
  [
    'grpc cancel mid-call',
    async () => {
      const c = newEcho();
      const call = c.say(Buffer.from('sleep:1000'), new grpc.Metadata(), {}, () => {});
      await sleep(between(0, 500));
      call.cancel();
      c.close();
    },
  ],
];

// ─── namespace clients that vanish without FIN ──────────────────────────────

function run(cmd: string, args: string[], input?: string): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

const NS_CLIENT = `
const net = require('node:net'); const http2 = require('node:http2');
const host = process.argv[1]; const web = Number(process.argv[2]); const tcp = Number(process.argv[3]);
const keep = [];
for (let i = 0; i < 3; i++) {
  const s = net.connect(web, host, () => s.write('GET /slow?ms=5000 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')); s.on('error', () => {}); keep.push(s);
  const k = net.connect(web, host, () => k.write('GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')); k.on('error', () => {}); keep.push(k);
  const w = net.connect(web, host, () => w.write('GET /ws HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n')); w.on('error', () => {}); keep.push(w);
  const t = net.connect(tcp, host, () => t.write('hello')); t.on('error', () => {}); keep.push(t);
  const h = http2.connect('http://' + host + ':' + web); h.on('error', () => {});
  const r = h.request({ ':path': '/slow?ms=5000' }); r.on('error', () => {}); r.resume();
}
setTimeout(() => process.stdout.write('ready\\n'), 800);
setInterval(() => {}, 1000);
`;

/**
 * Clients in a fresh namespace open connections of every kind, then go
 * silent (every packet dropped both ways) and are killed: their FINs and
 * resets never leave. The namespace and its veth are then deleted. The
 * gateway listens on NS.hostIp, an address on the host's loopback for the
 * whole run, reached from the namespace by a route over the veth.
 */
async function vanishRound(): Promise<void> {
  run('ip', ['netns', 'add', NS.ns]);
  try {
    run('ip', ['link', 'add', NS.hostSide, 'type', 'veth', 'peer', 'name', NS.nsSide]);
    run('ip', ['link', 'set', NS.nsSide, 'netns', NS.ns]);
    run('ip', ['link', 'set', NS.hostSide, 'up']);
    run('ip', ['route', 'add', `${NS.nsIp}/32`, 'dev', NS.hostSide]);
    run('ip', ['-n', NS.ns, 'addr', 'add', `${NS.nsIp}/32`, 'dev', NS.nsSide]);
    run('ip', ['-n', NS.ns, 'link', 'set', NS.nsSide, 'up']);
    run('ip', ['-n', NS.ns, 'link', 'set', 'lo', 'up']);
    run('ip', ['-n', NS.ns, 'route', 'add', `${NS.hostIp}/32`, 'dev', NS.nsSide]);
    await sleep(300);
    const child = spawn(
      'ip',
      ['netns', 'exec', NS.ns, NODE, '-e', NS_CLIENT, NS.hostIp, String(webPort), String(tcpPort)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await Promise.race([once(child.stdout, 'data'), sleep(5000)]);
    const chain = (name: string, hook: string): string =>
      ` chain ${name} {\n  type filter hook ${hook} priority 0; policy drop;\n }\n`;
    run(
      'ip',
      ['netns', 'exec', NS.ns, 'nft', '-f', '-'],
      `table inet drop_all {\n${chain('in', 'input')}${chain('out', 'output')}}\n`,
    );
    child.kill('SIGKILL');
    await once(child, 'exit');
    note('netns clients vanished');
  } finally {
    // The namespace may outlive its deletion while its orphaned sockets
    // close: delete the veth (and with it the route) here.
    spawnSync('ip', ['link', 'del', NS.hostSide]);
    spawnSync('ip', ['netns', 'del', NS.ns]);
  }
}

// ─── chaos ──────────────────────────────────────────────────────────────────

async function chaos(gw: ChildProcess, until: number): Promise<void> {
  const pending = new Set<Promise<void>>();
  const track = (p: Promise<void>): void => {
    const q = p
      .catch((e: unknown) => note(`chaos action failed: ${String(e)}`))
      .finally(() => pending.delete(q));
    pending.add(q);
  };
  let nextVanish = performance.now() + 20_000;
  while (performance.now() < until && gatewayExit === undefined) {
    const r = random();
    if (r < 0.2) {
      const b = pick(allBackends);
      if (b.state !== 'down') {
        b.kill9();
        note(`kill -9 ${b.name}`);
        track(
          sleep(between(300, 4000)).then(async () => {
            await b.start();
            note(`restarted ${b.name}`);
          }),
        );
      }
    } else if (r < 0.32) {
      const b = pick(allBackends);
      if (b.state === 'up') {
        b.stop();
        note(`SIGSTOP ${b.name}`);
        track(
          sleep(between(500, 6000)).then(() => {
            b.cont();
            note(`SIGCONT ${b.name}`);
          }),
        );
      }
    } else if (r < 0.5) {
      const what: string[] = [];
      const kind = pick<Kind>(['h1', 'grpc', 'tcp']);
      const port = pick(backends[kind]).port;
      const members = knobs.members[kind];
      if (members.has(port) && members.size > 1) {
        members.delete(port);
        what.push(`-${kind}:${port}`);
      } else if (!members.has(port)) {
        members.add(port);
        what.push(`+${kind}:${port}`);
      }
      if (random() < 0.3) {
        knobs.requestTimeout = pick(['1s', '2s', '3s']);
        what.push(`request ${knobs.requestTimeout}`);
      }
      if (random() < 0.3) {
        knobs.health = !knobs.health;
        what.push(`health ${knobs.health ? 'on' : 'off'}`);
      }
      if (random() < 0.2) {
        knobs.wsPing = pick(['{ interval: 2s, timeout: 1s }', '{ interval: 1s, timeout: 500ms }', 'off']);
        what.push(`ws ping ${knobs.wsPing}`);
      }
      if (random() < 0.2) {
        knobs.maxAge = pick(['off', '5s', '20s']);
        what.push(`maxConnectionAge ${knobs.maxAge}`);
      }
      if (random() < 0.2) {
        knobs.drain = pick(['0s', '1s', '3s']);
        what.push(`drain ${knobs.drain}`);
      }
      reload(gw);
      note(`reload: ${what.join(', ')}`);
    } else {
      const [name, fn] = pick(misbehaviours);
      count('misbehaving', name);
      track(fn());
    }
    if (values.netns && performance.now() > nextVanish) {
      nextVanish = performance.now() + between(30_000, 60_000);
      track(vanishRound());
    }
    await sleep(between(200, 1500));
  }
  await Promise.all(pending);
}

// ─── the run ────────────────────────────────────────────────────────────────

function settle(pid: number): number {
  process.kill(pid, 'SIGUSR2');
  spawnSync('sleep', ['1.5']);
  mallocTrim(pid);
  return rssBytes(pid);
}

async function waitUntil(what: string, fn: () => Promise<boolean> | boolean, ms: number): Promise<number> {
  const start = performance.now();
  while (!(await fn())) {
    if (performance.now() - start > ms) return -1;
    await sleep(500);
  }
  return Math.round((performance.now() - start) / 1000);
}

if (values.netns) {
  spawnSync('ip', ['netns', 'del', NS.ns]);
  spawnSync('ip', ['addr', 'del', `${NS.hostIp}/32`, 'dev', 'lo']);
  run('ip', ['addr', 'add', `${NS.hostIp}/32`, 'dev', 'lo']);
}
await Promise.all(allBackends.map((b) => b.start()));
const gw = startGateway();
const pid = gw.pid!;
await waitForPort(tcpPort);
await waitForPort(webPort);
await sleep(500);
const fdsAtStart = openFds(pid);
console.log(`seed ${seedText}; gateway pid ${pid}; ${fdsAtStart} fds at start; config ${configFile}`);

const grpcClients = Array.from({ length: 2 }, () => newEcho());
function startLoad(): Promise<unknown> {
  loadOn = true;
  return Promise.all([
    loop(() => h1Once(false), [20, 120]),
    loop(() => h1Once(false), [20, 120]),
    loop(() => h1Once(true), [50, 200]),
    h2Loop(false, 3),
    h2Loop(true, 2),
    ...Array.from({ length: 4 }, () => wsLoop(false)),
    ...Array.from({ length: 2 }, () => wsLoop(true)),
    ...grpcClients.map((c) => grpcUnaryLoop(c)),
    ...grpcClients.map((c) => grpcChatLoop(c)),
    ...Array.from({ length: 4 }, () => tcpLoop()),
  ]);
}
async function stopLoad(load: Promise<unknown>): Promise<void> {
  loadOn = false;
  for (const c of closers) c();
  await Promise.race([load, sleep(HANG_MS + 5000)]);
  h1Agent.destroy();
  h1sAgent.destroy();
}

function h2UpstreamSockets(): number {
  const grpcPorts = new Set(backends.grpc.map((b) => `:${b.port}`));
  return gatewaySockets(pid).filter((l) => {
    const peer = l.trim().split(/\s+/)[4] ?? '';
    return l.startsWith('ESTAB') && [...grpcPorts].some((p) => peer.endsWith(p));
  }).length;
}
async function liveGauges(): Promise<number> {
  const m = await metrics();
  return LIVE_GAUGES.reduce((n, g) => n + (m.get(g) ?? 0), 0);
}

// Warm-up: load without chaos, then settle, for the memory baseline.
let load = startLoad();
await sleep(Number(values.warmup) * 1000);
await stopLoad(load);
const warmQuiet = await waitUntil(
  'warm-up quiet',
  async () => (await liveGauges()) === 0 && openFds(pid) - h2UpstreamSockets() <= fdsAtStart,
  45_000,
);
const rssBase = Math.min(settle(pid), settle(pid));
console.log(
  `warm-up: quiet after ${warmQuiet} s; settled RSS ${(rssBase / 2 ** 20).toFixed(1)} MiB; ${openFds(pid)} fds`,
);
tally.clear();
samples.clear();

// Chaos.
const chaosMs = Number(values.minutes) * 60_000;
load = startLoad();
note('chaos starts');
await chaos(gw, performance.now() + chaosMs);
note('chaos ends: every backend up, initial config back');
for (const b of allBackends) {
  b.cont();
  if (b.state === 'down') await b.start();
}
Object.assign(knobs, structuredClone(initialKnobs));
if (gatewayExit === undefined) reload(gw);
await sleep(2000);
await stopLoad(load);
for (const c of grpcClients) c.close();
note('load stopped');

// Verdict.
const failures: string[] = [];
let fdsQuiet = -1;
let gaugesQuiet = -1;
let rssEnd = 0;
if (gatewayExit !== undefined) failures.push(`gateway exited: ${gatewayExit}`);
else {
  // The longest timeouts that hold a closed client's connection: clientIdle 20s, the h1 pool's 30 s idle, keepalive probes (2 s + 10 × 1 s).
  gaugesQuiet = await waitUntil('gauges', async () => (await liveGauges()) === 0, 45_000);
  fdsQuiet = await waitUntil('fds', () => openFds(pid) - h2UpstreamSockets() <= fdsAtStart, 45_000);
  const m = await metrics();
  if (gaugesQuiet < 0)
    failures.push(
      `live gauges not 0: ${LIVE_GAUGES.map((g) => `${g}=${m.get(g)}`).join(' ')}; ${[...m]
        .filter(([k, v]) => k.includes('{') && LIVE_GAUGES.some((g) => k.startsWith(g)) && v !== 0)
        .map(([k, v]) => `${k} ${v}`)
        .join('; ')}`,
    );
  if (fdsQuiet < 0) {
    failures.push(
      `fds ${openFds(pid)} (${h2UpstreamSockets()} HTTP/2 upstream sockets) vs ${fdsAtStart} at start`,
    );
    console.log(
      `gateway sockets:\n${gatewaySockets(pid)
        .filter((l) => !l.startsWith('LISTEN'))
        .join('\n')}`,
    );
  }
  console.log(
    `protocol errors counted by the gateway: ${[...m]
      .filter(([k, v]) => k.startsWith('holdfast_protocol_errors_total{') && v > 0)
      .map(([k, v]) => `${/reason="([^"]*)"/.exec(k)?.[1]}@${/service="([^"]*)"/.exec(k)?.[1]} ${v}`)
      .join(', ')}`,
  );
  if (gaugesQuiet < 0 || fdsQuiet < 0) console.log(`/status: ${await admin('/status')}`);
  rssEnd = Math.min(settle(pid), settle(pid));
  const margin = Math.max(8 * 2 ** 20, rssBase * 0.15);
  if (rssEnd > rssBase + margin)
    failures.push(
      `RSS ${(rssEnd / 2 ** 20).toFixed(1)} MiB after settle vs ${(rssBase / 2 ** 20).toFixed(1)} MiB after warm-up`,
    );
}
if (gatewayStderr !== '') failures.push(`gateway wrote to stderr: ${gatewayStderr.slice(0, 2000)}`);
for (const [key, e] of logsByMsg)
  if (e.level >= 50 && !key.includes('reload rejected'))
    failures.push(`error log x${e.n}: ${JSON.stringify(e.first)}`);
for (const [kind, m] of tally)
  for (const [outcome, n] of m)
    if (outcome.startsWith('BAD') || outcome.startsWith('HANG'))
      failures.push(`${kind}: ${outcome} x${n} (${samples.get(`${kind} ${outcome}`) ?? ''})`);

console.log('\n── chaos log (last 40) ──');
console.log(events.slice(-40).join('\n'));
console.log(
  `(${events.length} events: ${events.filter((e) => e.includes('kill -9')).length} kill -9, ${events.filter((e) => e.includes('SIGSTOP')).length} SIGSTOP, ${events.filter((e) => e.includes('reload')).length} reloads, ${events.filter((e) => e.includes('vanished')).length} vanish rounds)`,
);
console.log('\n── outcomes ──');
for (const [kind, m] of [...tally].sort())
  console.log(
    `${kind.padEnd(16)} ${[...m]
      .sort((a, b) => b[1] - a[1])
      .map(([o, n]) => `${o}: ${n}`)
      .join(', ')}`,
  );
console.log('\n── gateway log lines by message ──');
for (const [key, e] of [...logsByMsg].sort((a, b) => b[1].n - a[1].n))
  console.log(`${String(e.n).padStart(6)}  ${key}`);
console.log('\n── samples ──');
for (const [k, v] of samples) console.log(`${k}: ${v}`);
console.log(`\n── verdict (seed ${seedText}) ──`);
console.log(
  `gauges at 0 after ${gaugesQuiet} s; fds back after ${fdsQuiet} s (${fdsAtStart} at start); RSS ${(rssBase / 2 ** 20).toFixed(1)} → ${(rssEnd / 2 ** 20).toFixed(1)} MiB`,
);
if (failures.length === 0) console.log('PASS');
else console.log(`FAIL\n- ${failures.join('\n- ')}`);
gw.kill('SIGTERM');
await Promise.race([once(gw, 'exit'), sleep(10_000)]);
if (gw.exitCode === null && gw.signalCode === null) gw.kill('SIGKILL');
for (const b of allBackends) b.kill9();
if (values.netns) spawnSync('ip', ['addr', 'del', `${NS.hostIp}/32`, 'dev', 'lo']);
process.exit(failures.length === 0 ? 0 : 1);
