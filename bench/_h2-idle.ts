/**
 * `node bench/_h2-idle.ts [--conns 9000] [--steps 4] [--seconds 30] [--runs 3] [--tls]
 *   [--peers holdfast,nginx,haproxy] [--entry label=path/to/cli/main.js …] [--ping 30s|off]
 *   [--clients 3] [--batch 50] [--no-trim] [--json]`
 *
 * What an idle HTTP/2 client connection costs a proxy, holdfast beside nginx
 * and HAProxy in the same run: each client connection (node:http2, spread
 * over `--clients` processes, so no process nears the fd limit) makes one
 * request through the proxy to a backend (nginx answering 200 "ok" on
 * HTTP/1.1, in its own process), reads the response, and then stays open and
 * idle. Cleartext by default (h2c with prior knowledge: holdfast's `protocol:
 * http` listener, nginx `listen … http2`, HAProxy `bind … proto h2`);
 * `--tls` runs TLS with ALPN h2 instead (an ECDSA P-256 certificate).
 *
 * Per proxy and run:
 *   - memory: resident memory (VmRSS; nginx's worker) read in a settled state
 *     (a pause, a full memory-reducing collection for holdfast, a pause,
 *     glibc's malloc_trim through gdb, as bench/tcp.ts's idleMemory does) at
 *     0 and after each of `--steps` equal steps up to `--conns` connections;
 *     the figure is the least-squares slope, bytes per added connection;
 *   - idle CPU: with all `--conns` open and settled, the proxy's CPU
 *     (user + system, /proc) over `--seconds`, in % of one core.
 * Proxies are interleaved run by run (the order rotates) and medians printed.
 * Each peer runs its own defaults for keepalive except where it would close
 * the idle connections during the measurement: holdfast its defaults
 * (`http2.ping` every 30 s ± 10 %, 10 s ACK timeout, `clientIdle` 300 s;
 * `--ping` overrides the interval); nginx 1.22 sends no PINGs and its
 * `keepalive_timeout` (75 s; it replaced `http2_idle_timeout` in 1.19.7) is
 * raised to 1 h; HAProxy 2.6 sends no PINGs,
 * `timeout client 1h` (bench/lib/peers.ts). Several `--entry` builds of
 * holdfast are measured as peers of their own (A/B). Hold the bench lock.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { freePorts } from '../test/helpers/net.ts';
import { ask } from './lib/ws-load.ts';
import {
  cpuMs,
  holdfastEntry,
  median,
  ROOT,
  rssBytes,
  type RunningPeer,
  startHaproxy,
  startHoldfast,
  startNginx,
  tempDir,
  waitForQuiet,
  leastSquares,
  settle,
} from './lib/peers.ts';

const { values } = parseArgs({
  options: {
    conns: { type: 'string', default: '9000' },
    steps: { type: 'string', default: '4' },
    seconds: { type: 'string', default: '30' },
    runs: { type: 'string', default: '3' },
    tls: { type: 'boolean', default: false },
    peers: { type: 'string', default: 'holdfast,nginx,haproxy' },
    entry: { type: 'string', multiple: true },
    ping: { type: 'string' },
    clients: { type: 'string', default: '3' },
    batch: { type: 'string', default: '50' },
    'no-trim': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const conns = Number(values.conns);
const steps = Number(values.steps);
const tls = values.tls;
const trim = !values['no-trim'];
const scheme = tls ? 'https' : 'http';

interface Peer {
  label: string;
  start(port: number): Promise<RunningPeer | string>;
}

let cert: { cert: string; key: string; pem: string } | undefined;
if (tls) {
  const dir = tempDir('h2-idle-tls');
  const c = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key'), pem: join(dir, 'tls.pem') };
  const r = spawnSync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    c.key,
    '-out',
    c.cert,
    '-days',
    '1',
    '-subj',
    '/CN=localhost',
  ]);
  if (r.status !== 0) throw new Error('openssl could not make a certificate');
  spawnSync('sh', ['-c', `cat ${c.cert} ${c.key} > ${c.pem}`]);
  cert = c;
}

const [backendPort] = await freePorts(1);
const peers: Peer[] = [];
for (const name of values.peers.split(',')) {
  if (name === 'holdfast') {
    const entries = (values.entry ?? [`holdfast=${holdfastEntry()}`]).map((e) => {
      const at = e.indexOf('=');
      return { name: e.slice(0, at), path: e.slice(at + 1) };
    });
    for (const entry of entries) {
      peers.push({
        label: entry.name,
        start: (port) =>
          startHoldfast(
            [
              'log: { level: warn }',
              'services:',
              '  - name: h2idle',
              '    protocol: http',
              `    listen: 127.0.0.1:${port}`,
              `    backends: { static: [127.0.0.1:${backendPort}] }`,
              ...(cert === undefined ? [] : [`    tls: { cert: ${cert.cert}, key: ${cert.key} }`]),
              ...(values.ping === undefined
                ? []
                : [
                    `    http2: { ping: ${values.ping === 'off' ? '{ interval: off }' : `{ interval: ${values.ping} }`} }`,
                  ]),
            ].join('\n'),
            port,
            { preloadGc: true, entry },
          ),
      });
    }
  } else if (name === 'nginx') {
    const listen =
      cert === undefined
        ? `listen 127.0.0.1:PORT http2;`
        : `listen 127.0.0.1:PORT ssl http2; ssl_certificate ${cert.cert}; ssl_certificate_key ${cert.key};`;
    peers.push({
      label: 'nginx',
      start: (port) =>
        startNginx(
          `http {
  access_log off;
  upstream b { server 127.0.0.1:${backendPort}; keepalive 64; keepalive_requests 1000000; }
  server {
    ${listen.replace('PORT', String(port))}
    keepalive_timeout 1h;
    keepalive_requests 1000000;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}`,
          port,
        ),
    });
  } else if (name === 'haproxy') {
    const bind = cert === undefined ? 'proto h2' : `ssl crt ${cert.pem} alpn h2`;
    peers.push({
      label: 'haproxy',
      start: (port) =>
        startHaproxy(
          `defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend f
  bind 127.0.0.1:${port} ${bind}
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:${backendPort}
`,
          port,
        ),
    });
  } else throw new Error(`unknown peer ${name}`);
}

const backend = await startNginx(
  `http { access_log off; server { listen 127.0.0.1:${backendPort}; keepalive_requests 1000000; keepalive_timeout 1h; location / { return 200 "ok"; } } }`,
  backendPort!,
);
if (typeof backend === 'string') throw new Error(`the backend is nginx: ${backend}`);

const clients: ChildProcess[] = Array.from({ length: Number(values.clients) }, () =>
  fork(join(ROOT, 'bench/_h2-clients.ts'), {
    execPath: process.execPath,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  }),
);
interface Count {
  open: number;
  lost: number;
  goaways: number;
}
/** Open `n` more connections, spread over the client processes. */
async function openMore(url: string, n: number): Promise<Count> {
  const per = clients.map((_, i) => Math.floor(n / clients.length) + (i < n % clients.length ? 1 : 0));
  const got = await Promise.all(
    clients.map((c, i) => ask<Count>(c, { cmd: 'open', url, n: per[i], batch: Number(values.batch) })),
  );
  return got.reduce((a, b) => ({
    open: a.open + b.open,
    lost: a.lost + b.lost,
    goaways: a.goaways + b.goaways,
  }));
}
async function countAll(): Promise<Count> {
  const got = await Promise.all(clients.map((c) => ask<Count>(c, { cmd: 'count' })));
  return got.reduce((a, b) => ({
    open: a.open + b.open,
    lost: a.lost + b.lost,
    goaways: a.goaways + b.goaways,
  }));
}
async function closeAll(): Promise<void> {
  await Promise.all(clients.map((c) => ask(c, { cmd: 'close' })));
}

interface Sample {
  bytes: number;
  r2: number;
  cpuPct: number;
  rssMiB: number;
}
const samples = new Map<string, Sample[]>(peers.map((p) => [p.label, []]));
const ports = await freePorts(peers.length);
try {
  for (let run = 0; run < Number(values.runs); run++) {
    for (let k = 0; k < peers.length; k++) {
      const i = (k + run) % peers.length;
      const p = peers[i]!;
      const port = ports[i]!;
      if (!(await waitForQuiet()))
        console.error(`# ${p.label}: the machine stayed busy for 30 s; this run is noisy`);
      const peer = await p.start(port);
      if (typeof peer === 'string') {
        console.error(`# ${p.label}: ${peer}`);
        continue;
      }
      const url = `${scheme}://127.0.0.1:${port}`;
      try {
        // One-time allocations (JIT, pools, the backend connections) before the first reading.
        await openMore(url, 150);
        await closeAll();
        const rss = (): number => peer.pids().reduce((n, pid) => n + rssBytes(pid), 0);
        const readings: { open: number; rss: number }[] = [];
        let trimmed = trim;
        let open = 0;
        for (let s = 0; s <= steps; s++) {
          if (s > 0) {
            const target = Math.round((conns * s) / steps);
            await openMore(url, target - open);
            open = target;
          }
          trimmed = (await settle(peer, trim)) && trimmed;
          readings.push({ open, rss: rss() });
        }
        const cpu = (): number => peer.pids().reduce((n, pid) => n + cpuMs(pid), 0);
        const c0 = cpu();
        const t0 = performance.now();
        await sleep(Number(values.seconds) * 1000);
        const cpuPct = ((cpu() - c0) / (performance.now() - t0)) * 100;
        const after = await countAll();
        const fit = leastSquares(readings.map((r) => ({ x: r.open, y: r.rss })));
        const last = readings[readings.length - 1]!;
        const sample = { bytes: fit.slope, r2: fit.r2, cpuPct, rssMiB: last.rss / 2 ** 20 };
        samples.get(p.label)!.push(sample);
        const row = {
          bench: 'h2-idle',
          run: run + 1,
          proxy: p.label,
          tls,
          connections: conns,
          bytesPerConnection: Math.round(fit.slope),
          r2: Math.round(fit.r2 * 10_000) / 10_000,
          idleCpuPct: Math.round(cpuPct * 100) / 100,
          windowSeconds: Number(values.seconds),
          allocatorTrimmed: trimmed,
          stillOpen: after.open - after.lost,
          goaways: after.goaways,
          readings: readings.map((r) => ({
            open: r.open,
            rssMiB: Math.round((r.rss / 2 ** 20) * 100) / 100,
          })),
        };
        if (values.json) console.log(JSON.stringify(row));
        console.error(
          `# run ${run + 1} ${p.label}: ${row.bytesPerConnection} B/conn (R² ${row.r2}), ${row.idleCpuPct} % of a core, ` +
            `RSS ${readings.map((r) => (r.rss / 2 ** 20).toFixed(1)).join(' → ')} MiB, ${row.stillOpen}/${conns} still open, ${after.goaways} GOAWAYs`,
        );
      } finally {
        await closeAll().catch(() => {});
        await peer.stop();
      }
      await sleep(500);
    }
  }
} finally {
  for (const c of clients) c.kill('SIGKILL');
  await backend.stop();
}

const fmt = (xs: number[], d: number): string => xs.map((x) => x.toFixed(d)).join(', ');
if (!values.json) {
  console.log(
    `idle HTTP/2 (${tls ? 'TLS, ALPN h2' : 'h2c'}) client connections, ${conns} per proxy in ${steps} steps, CPU over ${values.seconds} s, median of ${values.runs} run(s)`,
  );
  console.log(
    '| proxy | bytes / idle connection | runs | idle CPU, % of a core | runs | RSS at the top (MiB) |',
  );
  console.log('| --- | ---: | --- | ---: | --- | ---: |');
}
for (const [label, xs] of samples) {
  if (xs.length === 0) continue;
  const b = xs.map((x) => x.bytes);
  const c = xs.map((x) => x.cpuPct);
  const r = xs.map((x) => x.rssMiB);
  if (values.json) {
    console.log(
      JSON.stringify({
        bench: 'h2-idle',
        proxy: label,
        tls,
        connections: conns,
        bytesPerConnection: Math.round(median(b)),
        idleCpuPct: Math.round(median(c) * 100) / 100,
        rssMiB: Math.round(median(r) * 100) / 100,
        runs: xs.length,
      }),
    );
  } else {
    console.log(
      `| ${label} | ${Math.round(median(b))} | ${fmt(b, 0)} | ${median(c).toFixed(2)} | ${fmt(c, 2)} | ${median(r).toFixed(1)} |`,
    );
  }
}
