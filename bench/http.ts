/**
 * `npm run bench -- http [--json] [--seconds N] [--runs N] [--warmup N]`:
 * requests/s and latency through one proxy process to one backend, side by
 * side in one run: holdfast, nginx, HAProxy and a plain node:http proxy.
 * HTTP/1.1 keep-alive load from wrk (p99 from its --latency report), HTTP/2
 * (h2c prior knowledge) from h2load (mean latency; h2load reports no
 * percentiles). Each peer first gets `--warmup` seconds (default 1) of the
 * same load, not measured. Missing tools or peers are reported and skipped.
 *
 * Each run's line (stderr) also gives wrk's p99.9 and the CPU the rest of the
 * machine used meanwhile (the load generator and anything else, not the proxy
 * or the backend). On a small machine the three share the cores and the
 * tail follows how much CPU is left over: a run where something else took a
 * share of a core says little about the proxy.
 */
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { BenchArgs } from './run.ts';
import {
  cpuMs,
  machineBusyMs,
  NODE,
  type RunningPeer,
  startHaproxy,
  startHoldfast,
  startNginx,
  tempDir,
  waitForPort,
  waitForQuiet,
  which,
} from './lib/peers.ts';
import { freePorts } from '../test/helpers/net.ts';

interface Row {
  proxy: string;
  load: 'http1' | 'http2';
  rps: number;
  /** ms: p99 for wrk, mean for h2load. */
  latencyMs: number;
  latencyKind: 'p99' | 'mean';
  errors: number;
  /**
   * CPU time (user + system) the proxy's processes spent per request in the
   * measured window, in µs. Throughput on a small machine also depends on how
   * much CPU the load generator and the backend get beside the proxy; this
   * says what the proxy itself costs per request.
   */
  cpuUsPerRequest: number;
}

/** A load run's figures, before the proxy's CPU is added; `p999Ms` from wrk only. */
type LoadResult = Omit<Row, 'proxy' | 'load' | 'cpuUsPerRequest'> & { requests: number; p999Ms?: number };

/** wrk script: print the 99.9th percentile (µs), which `--latency` leaves out. */
const WRK_P999 = `done = function(summary, latency, requests) io.write(string.format("p99.9 %d\\n", latency:percentile(99.9))) end\n`;
let wrkScript: string | undefined;

const PLAIN_PROXY = `
const http = require('node:http');
const [port, backend] = process.argv.slice(1).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
http.createServer((req, res) => {
  const up = http.request({ host: '127.0.0.1', port: backend, method: req.method, path: req.url, headers: req.headers, agent }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on('error', () => { res.writeHead(502); res.end(); });
  req.pipe(up);
}).listen(port, '127.0.0.1');
`;

const NODE_BACKEND = `
const http = require('node:http');
http.createServer((req, res) => { req.resume(); res.end('ok'); }).listen(Number(process.argv[1]), '127.0.0.1');
`;

/** One row per proxy and load: the median req/s and the median latency over the runs. */
function medians(rows: Row[]): Row[] {
  const groups = new Map<string, Row[]>();
  for (const r of rows) {
    const key = `${r.proxy}\u0000${r.load}`;
    const g = groups.get(key);
    if (g === undefined) groups.set(key, [r]);
    else g.push(r);
  }
  return [...groups.values()].map((g) => {
    const sorted = [...g].sort((a, b) => a.rps - b.rps);
    const mid = sorted[Math.floor((sorted.length - 1) / 2)]!;
    const at = (xs: number[]): number => xs.sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
    return {
      ...mid,
      latencyMs: at(g.map((r) => r.latencyMs)),
      cpuUsPerRequest: at(g.map((r) => r.cpuUsPerRequest)),
      errors: g.reduce((n, r) => n + r.errors, 0),
    };
  });
}

function toMs(v: string, unit: string): number {
  const n = Number(v);
  return unit === 'us' ? n / 1000 : unit === 's' ? n * 1000 : n;
}

function runWrk(port: number, seconds: number): LoadResult {
  if (wrkScript === undefined) {
    wrkScript = join(tempDir('wrk'), 'p999.lua');
    writeFileSync(wrkScript, WRK_P999);
  }
  const r = spawnSync(
    'wrk',
    ['-t1', '-c32', `-d${seconds}s`, '--latency', '-s', wrkScript, `http://127.0.0.1:${port}/`],
    { encoding: 'utf8' },
  );
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? 0);
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? 0);
  const p99 = /\s99%\s+([\d.]+)(us|ms|s)/.exec(r.stdout);
  const p999 = /^p99\.9 (\d+)$/m.exec(r.stdout);
  const errs = /Non-2xx or 3xx responses: (\d+)/.exec(r.stdout);
  const sockErr = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(r.stdout);
  const errors =
    Number(errs?.[1] ?? 0) + (sockErr === null ? 0 : sockErr.slice(1).reduce((n, x) => n + Number(x), 0));
  return {
    rps,
    requests,
    latencyMs: p99 === null ? NaN : toMs(p99[1]!, p99[2]!),
    latencyKind: 'p99',
    errors,
    p999Ms: p999 === null ? NaN : Number(p999[1]) / 1000,
  };
}

function runH2load(port: number, seconds: number): LoadResult {
  const r = spawnSync('h2load', ['-c8', '-m16', '-t1', `-D${seconds}`, `http://127.0.0.1:${port}/`], {
    encoding: 'utf8',
  });
  const rps = Number(/finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(r.stdout)?.[1] ?? 0);
  const requests = Number(/requests: \d+ total, \d+ started, (\d+) done/.exec(r.stdout)?.[1] ?? 0);
  const mean = /time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)/.exec(r.stdout);
  const failed =
    Number(/(\d+) failed/.exec(r.stdout)?.[1] ?? 0) + Number(/(\d+) errored/.exec(r.stdout)?.[1] ?? 0);
  return {
    rps,
    requests,
    latencyMs: mean === null ? NaN : toMs(mean[1]!, mean[2]!),
    latencyKind: 'mean',
    errors: failed,
  };
}

function child(script: string, args: number[]): RunningPeer {
  const c = spawn(NODE, ['-e', script, ...args.map(String)], { stdio: 'ignore' });
  return {
    name: 'node',
    pids: () => [c.pid!],
    stop: () =>
      new Promise((resolve) => {
        if (c.exitCode !== null) return resolve();
        c.once('exit', () => resolve());
        c.kill('SIGTERM');
      }),
  };
}

export async function run(args: BenchArgs): Promise<void> {
  const { values } = parseArgs({
    args: args.rest,
    options: {
      seconds: { type: 'string', default: '5' },
      runs: { type: 'string', default: '1' },
      warmup: { type: 'string', default: '1' },
    },
    strict: false,
  });
  const seconds = Number(values.seconds);
  const runs = Math.max(1, Number(values.runs));
  const warmup = Math.max(0, Number(values.warmup));
  const say = (msg: string): void =>
    args.json ? console.log(JSON.stringify({ skipped: msg })) : console.log(`# ${msg}`);
  const haveWrk = which('wrk') !== undefined;
  const haveH2load = which('h2load') !== undefined;
  if (!haveWrk) say('wrk not installed (apt-get install wrk): HTTP/1.1 load skipped');
  if (!haveH2load) say('h2load not installed (apt-get install nghttp2-client): HTTP/2 load skipped');
  const [backendPort, hfPort, ngPort, haPort, haH2Port, plainPort] = await freePorts(6);

  // One backend for everyone: nginx returning a constant when available (so the backend is not the limit), else node.
  let backend: RunningPeer | string = await startNginx(
    `http { access_log off; server { listen 127.0.0.1:${backendPort}; keepalive_requests 1000000; location / { return 200 "ok"; } } }`,
    backendPort!,
  );
  if (typeof backend === 'string') {
    backend = child(NODE_BACKEND, [backendPort!]);
    await waitForPort(backendPort!);
  }
  const backendPeer = backend;

  const rows: Row[] = [];
  let run = 0;
  const measure = async (
    name: string,
    start: () => Promise<RunningPeer | string>,
    h1Port: number | undefined,
    h2Port: number | undefined,
  ): Promise<void> => {
    const peer = await start();
    if (typeof peer === 'string') return say(`${name}: ${peer}`);
    try {
      // Other work on the machine shows up in every figure, the tail above all: start on a quiet one.
      if (!(await waitForQuiet()))
        console.error(`# ${name}: the machine stayed busy for 30 s; this run is noisy`);
      // Every peer gets the same load unmeasured first (JIT compilation, heap growth, connection
      // pools): the figures are for a proxy that has been running, not for its first second.
      if (warmup > 0) {
        if (haveWrk && h1Port !== undefined) runWrk(h1Port, warmup);
        if (haveH2load && h2Port !== undefined) runH2load(h2Port, warmup);
      }
      const cpu = (): number => peer.pids().reduce((n, pid) => n + cpuMs(pid), 0);
      const backendCpu = (): number => backendPeer.pids().reduce((n, pid) => n + cpuMs(pid), 0);
      const record = (load: Row['load'], runLoad: () => LoadResult): void => {
        const before = cpu();
        const beforeBackend = backendCpu();
        const beforeMachine = machineBusyMs();
        const startedAt = performance.now();
        const { requests, p999Ms, ...result } = runLoad();
        const proxyMs = cpu() - before;
        const otherMs = machineBusyMs() - beforeMachine - proxyMs - (backendCpu() - beforeBackend);
        const otherCores = otherMs / (performance.now() - startedAt);
        const cpuUsPerRequest = requests > 0 ? (proxyMs * 1000) / requests : NaN;
        const row: Row = { proxy: name, load, ...result, cpuUsPerRequest };
        rows.push(row);
        // Each run as it comes (stderr, so --json output stays one row per median): the spread behind the medians.
        const tail = p999Ms === undefined ? '' : ` (p99.9 ${p999Ms.toFixed(2)} ms)`;
        console.error(
          `# run ${run + 1}: ${row.proxy} ${row.load} ${Math.round(row.rps)} req/s, ${row.latencyMs.toFixed(2)} ms ${row.latencyKind}${tail}, ${cpuUsPerRequest.toFixed(1)} µs CPU/request, ${otherCores.toFixed(2)} cores used by the load generator and others`,
        );
      };
      if (haveWrk && h1Port !== undefined) record('http1', () => runWrk(h1Port, seconds));
      if (haveH2load && h2Port !== undefined) record('http2', () => runH2load(h2Port, seconds));
    } finally {
      await peer.stop();
    }
  };

  const holdfastYaml = `log: { level: warn }
services:
  - name: bench
    protocol: http
    listen: 127.0.0.1:${hfPort}
    backends: { static: [127.0.0.1:${backendPort}] }
`;
  const nginxH1 = `http {
  access_log off;
  upstream b { server 127.0.0.1:${backendPort}; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${ngPort};
    keepalive_requests 1000000;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}`;
  // Debian's nginx serves h2c prior knowledge only on a port without HTTP/1.1: a second run for HTTP/2.
  const nginxH2 = `http {
  access_log off;
  upstream b { server 127.0.0.1:${backendPort}; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${ngPort} http2;
    keepalive_requests 1000000;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}`;
  const haproxyCfg = `defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend f
  bind 127.0.0.1:${haPort}
  bind 127.0.0.1:${haH2Port} proto h2
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:${backendPort}
`;
  // Several runs interleave the proxies, so a noisy neighbour hits them alike; medians are reported.
  for (run = 0; run < runs; run++) {
    await measure('holdfast', () => startHoldfast(holdfastYaml, hfPort!), hfPort, hfPort);
    await measure('nginx', () => startNginx(nginxH1, ngPort!), ngPort, undefined);
    await measure('nginx', () => startNginx(nginxH2, ngPort!), undefined, ngPort);
    await measure('haproxy', () => startHaproxy(haproxyCfg, haPort!), haPort, haH2Port);
    await measure(
      'node:http proxy',
      async () => {
        const p = child(PLAIN_PROXY, [plainPort!, backendPort!]);
        await waitForPort(plainPort!);
        return p;
      },
      plainPort,
      undefined,
    );
  }
  await backend.stop();

  const clean = medians(rows);
  const ref = (proxy: string, load: string): Row | undefined =>
    clean.find((r) => r.proxy === proxy && r.load === load && r.rps > 0);
  if (args.json) {
    for (const r of clean) console.log(JSON.stringify({ bench: 'http', ...r }));
    return;
  }
  console.log(
    `http bench: ${seconds}s per load, median of ${runs} run(s), one proxy process, one backend (${typeof backend === 'string' ? 'node' : backend.name})`,
  );
  console.log('| proxy | load | req/s | latency (ms) | CPU µs/request | errors | vs nginx |');
  console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
  for (const r of clean) {
    if (r.rps === 0 && r.errors === 0) continue;
    const n = ref('nginx', r.load);
    const ratio = n === undefined ? '' : `${(r.rps / n.rps).toFixed(2)}×`;
    console.log(
      `| ${r.proxy} | ${r.load} | ${Math.round(r.rps)} | ${r.latencyMs.toFixed(2)} ${r.latencyKind} | ${r.cpuUsPerRequest.toFixed(1)} | ${r.errors} | ${ratio} |`,
    );
  }
  const hf = ref('holdfast', 'http1');
  const plain = ref('node:http proxy', 'http1');
  if (hf !== undefined && plain !== undefined) {
    console.log(
      `holdfast / plain node proxy (HTTP/1.1): ${(hf.rps / plain.rps).toFixed(2)}× req/s, ` +
        `${(plain.cpuUsPerRequest / hf.cpuUsPerRequest).toFixed(2)}× less CPU per request`,
    );
  }
}
