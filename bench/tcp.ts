/**
 * `npm run bench -- tcp [--json] [--seconds N] [--runs N] [--idle N] [--base N] [--steps N] [--no-trim]
 *  [--peers holdfast,nginx,haproxy] [--only throughput,churn,memory] [--churn-seconds N]
 *  [--churn-runs N] [--concurrency N] [--request-bytes N] [--sources N] [--baseline PATH]`
 *
 * holdfast's TCP proxy side by side with nginx's stream proxy and HAProxy in
 * TCP mode, in one run on this machine:
 *   - single-connection throughput (iperf3 through each proxy), median of runs;
 *   - connection churn: new connections a second and the proxy's CPU time per
 *     connection, many short connections (connect, send a small request, read
 *     the echo, close) from a C load generator (bench/lib/churn.c, built with
 *     the system's cc) to a C echo backend, median of interleaved runs. See churn.
 *   - memory per idle proxied connection, in bytes per added connection: the
 *     least-squares slope of the proxy's resident memory (VmRSS) against
 *     connections open, read at `--steps` + 1 (default 5) evenly spaced counts
 *     from `--base` (default 0) to base + `--idle` (default 5,000), each
 *     reading taken in a settled state: a pause, a full memory-reducing
 *     collection (holdfast only), another pause, glibc's malloc_trim (all
 *     peers; needs gdb, `--no-trim` leaves it out). See idleMemory.
 * Every proxy runs one worker / one thread, as holdfast does.
 *
 * `--baseline PATH`: another holdfast build (its `dist/cli/main.js`, or the
 * checkout it was built in) measured beside this one as the peer `baseline`,
 * for an A/B of a change in the same interleaved runs
 * (`--peers holdfast,baseline`).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import type { BenchArgs } from './run.ts';
import {
  cpuMs,
  median,
  NODE,
  rssBytes,
  type RunningPeer,
  startHaproxy,
  startHoldfast,
  startNginx,
  tempDir,
  waitForPort,
  which,
  machineBusyMs,
  leastSquares,
  settle,
} from './lib/peers.ts';

const HERE = new URL('.', import.meta.url).pathname;
const BACKEND = 17_101;
const PORTS = {
  direct: BACKEND,
  holdfast: 17_001,
  nginx: 17_002,
  haproxy: 17_003,
  baseline: 17_004,
} as const;
type PeerName = 'holdfast' | 'nginx' | 'haproxy' | 'baseline';

/** `--baseline`: the entry of the holdfast build to measure as the peer `baseline`. */
let baselineEntry: string | undefined;

function startPeer(name: PeerName, backend: number): Promise<RunningPeer | string> {
  const port = PORTS[name];
  switch (name) {
    case 'holdfast':
    case 'baseline': {
      if (name === 'baseline' && baselineEntry === undefined) return Promise.resolve('no --baseline given');
      const entry = name === 'baseline' ? { path: baselineEntry!, name } : undefined;
      // With gc-on-signal.mjs preloaded for `settle`: it only adds a SIGUSR2
      // listener, so the throughput runs are not affected.
      return startHoldfast(
        `services:\n  - name: bench\n    listen: 127.0.0.1:${port}\n    backends: { static: [127.0.0.1:${backend}] }\n    limits: { maxConnections: 9800 }\n`,
        port,
        { preloadGc: true, ...(entry === undefined ? {} : { entry }) },
      );
    }
    case 'nginx':
      return startNginx(
        `stream { server { listen 127.0.0.1:${port} backlog=8192; proxy_pass 127.0.0.1:${backend}; proxy_timeout 1h; } }`,
        port,
        ['ngx_stream_module'],
      );
    case 'haproxy':
      return startHaproxy(
        `frontend f\n  mode tcp\n  bind 127.0.0.1:${port}\n  default_backend b\nbackend b\n  mode tcp\n  server s1 127.0.0.1:${backend}\n`,
        port,
      );
  }
}

/**
 * One iperf3 run through `port`: received Gbit/s and bytes. Retried: the
 * probe that waits for a proxy's port reaches the iperf3 server as an empty
 * test, which keeps it busy for a moment.
 */
function iperf(port: number, seconds: number): { gbit: number; bytes: number } {
  let last = '';
  for (let attempt = 0; attempt < 4; attempt++) {
    const r = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-J'], {
      encoding: 'utf8',
      timeout: (seconds + 15) * 1000,
    });
    const json = JSON.parse(r.stdout || '{}') as {
      error?: string;
      end?: { sum_received?: { bits_per_second: number; bytes: number } };
    };
    const sum = json.end?.sum_received;
    if (r.status === 0 && sum !== undefined) return { gbit: sum.bits_per_second / 1e9, bytes: sum.bytes };
    last = json.error ?? r.stderr;
    spawnSync('sleep', ['1']);
  }
  throw new Error(`iperf3 through port ${port} failed: ${last}`);
}

/**
 * Throughput of one connection through each proxy. All proxies run at once
 * and the runs are interleaved (holdfast, nginx, haproxy, holdfast, …) so
 * that noise from the rest of the machine falls on all of them alike. Besides
 * Gbit/s, the proxy's own CPU time per GB relayed is reported: on a shared
 * 2-core machine where iperf3's two ends compete with the proxy, it is the
 * steadier measure of efficiency.
 */
async function throughput(names: PeerName[], seconds: number, runs: number, out: (row: object) => void) {
  if (which('iperf3') === undefined) {
    out({ name: 'tcp-throughput', skipped: 'iperf3 not installed (apt-get install iperf3)' });
    return;
  }
  const server = spawn('iperf3', ['-s', '-p', String(BACKEND), '-B', '127.0.0.1'], { stdio: 'ignore' });
  const peers: RunningPeer[] = [];
  try {
    await waitForPort(BACKEND);
    for (const name of names) {
      const peer = await startPeer(name, BACKEND);
      if (typeof peer === 'string') out({ name: 'tcp-throughput', peer: name, skipped: peer });
      else peers.push(peer);
    }
    const direct: number[] = [];
    const gbit = new Map<string, number[]>(peers.map((p) => [p.name, []]));
    const cpu = new Map<string, number[]>(peers.map((p) => [p.name, []]));
    for (const p of peers) iperf(PORTS[p.name as PeerName], 1); // warm-up
    for (let r = 0; r < runs; r++) {
      direct.push(iperf(BACKEND, seconds).gbit);
      for (const p of peers) {
        const cpuBefore = p.pids().reduce((n, pid) => n + cpuMs(pid), 0);
        const result = iperf(PORTS[p.name as PeerName], seconds);
        const cpuAfter = p.pids().reduce((n, pid) => n + cpuMs(pid), 0);
        gbit.get(p.name)!.push(result.gbit);
        cpu.get(p.name)!.push((cpuAfter - cpuBefore) / (result.bytes / 1e9));
      }
    }
    out({ name: 'tcp-throughput', peer: 'direct (no proxy)', gbitPerSec: round(median(direct)), runs });
    for (const p of peers) {
      out({
        name: 'tcp-throughput',
        peer: p.name,
        gbitPerSec: round(median(gbit.get(p.name)!)),
        cpuMsPerGB: round(median(cpu.get(p.name)!)),
        runs,
      });
    }
  } finally {
    for (const p of peers) await p.stop();
    server.kill('SIGKILL');
  }
}

/** The churn tool (bench/lib/churn.c), built once per bench run; a reason string when it cannot be. */
let churnTool: string | undefined;
function buildChurnTool(): string | { skipped: string } {
  if (churnTool !== undefined) return churnTool;
  const cc = which('cc') ?? which('gcc');
  if (cc === undefined) return { skipped: 'no C compiler to build bench/lib/churn.c (apt-get install gcc)' };
  const out = join(tempDir('churn'), 'churn');
  const r = spawnSync(cc, ['-O2', '-o', out, join(HERE, 'lib/churn.c')], { encoding: 'utf8' });
  if (r.status !== 0) return { skipped: `building bench/lib/churn.c failed: ${r.stderr}` };
  churnTool = out;
  return out;
}

interface ChurnResult {
  completed: number;
  errors: { connect: number; reset: number; short: number; timeout: number };
  seconds: number;
  cpuMs: number;
  medianUs: number;
  p99Us: number;
}

export interface ChurnOptions {
  seconds: number;
  runs: number;
  /** Connections the load generator keeps going at once. */
  concurrency: number;
  /** Size of the request each connection sends and reads back. */
  requestBytes: number;
  /** Local addresses (127.0.0.2, …) the load generator spreads its connections over. */
  sources: number;
}

function churnOnce(tool: string, port: number, o: ChurnOptions, seconds: number): ChurnResult {
  const args = ['client', port, o.requestBytes, o.concurrency, seconds, o.sources].map(String);
  const r = spawnSync(tool, args, { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  if (r.status !== 0) throw new Error(`churn client through port ${port} failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as ChurnResult;
}

/**
 * Connection churn: how many new connections a second one proxy process
 * takes, and what each costs it. When a gateway node or a backend fails,
 * thousands of long-lived clients reconnect at once, and this is the rate
 * they come back at.
 *
 * A C load generator (bench/lib/churn.c) keeps `concurrency` connections
 * going through the proxy, each connecting, sending `requestBytes`, reading
 * them back from a C echo backend (which closes once it has echoed them, so
 * that TIME_WAIT falls on accepted sockets, not on ephemeral ports: see the
 * file) and closing. Every proxy is up at once and the runs are interleaved,
 * the order rotating each run; each proxy first gets one unmeasured second of
 * the same load. Reported per proxy, as medians: connections completed a
 * second, the proxy's own CPU time (user + system, all its processes) per
 * connection, and the connection time (connect to close, median and p99).
 * Errors (refused or failed connects, resets, short answers, timeouts after
 * 5 s) are summed over the runs. On a 2-core machine the proxy shares the
 * cores with the load generator and the backend, so the rate depends on them
 * too: CPU per connection is the figure that says what the proxy costs. Each
 * run's line also gives the cores the load generator and the backend used.
 */
async function churn(names: PeerName[], o: ChurnOptions, out: (row: object) => void) {
  const tool = buildChurnTool();
  if (typeof tool !== 'string') {
    out({ name: 'tcp-churn', ...tool });
    return;
  }
  const server = spawn(tool, ['server', String(BACKEND), String(o.requestBytes)], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const peers: RunningPeer[] = [];
  try {
    await waitForPort(BACKEND);
    for (const name of names) {
      const peer = await startPeer(name, BACKEND);
      if (typeof peer === 'string') out({ name: 'tcp-churn', peer: name, skipped: peer });
      else peers.push(peer);
    }
    const cpu = (pids: number[]): number => pids.reduce((n, pid) => n + cpuMs(pid), 0);
    const runsOf = new Map<
      string,
      { rate: number; cpuUs: number; errors: number; median: number; p99: number }[]
    >(peers.map((p) => [p.name, []]));
    for (const p of peers) churnOnce(tool, PORTS[p.name as PeerName], o, 1); // warm-up
    for (let r = 0; r < o.runs; r++) {
      for (let i = 0; i < peers.length; i++) {
        const p = peers[(i + r) % peers.length]!;
        const proxyBefore = cpu(p.pids());
        const backendBefore = cpuMs(server.pid!);
        const machineBefore = machineBusyMs();
        const result = churnOnce(tool, PORTS[p.name as PeerName], o, o.seconds);
        const proxyMs = cpu(p.pids()) - proxyBefore;
        const backendMs = cpuMs(server.pid!) - backendBefore;
        const otherMs = machineBusyMs() - machineBefore - proxyMs - backendMs - result.cpuMs;
        const errors = Object.values(result.errors).reduce((n, e) => n + e, 0);
        const row = {
          rate: result.completed / result.seconds,
          cpuUs: result.completed > 0 ? (proxyMs * 1000) / result.completed : NaN,
          errors,
          median: result.medianUs,
          p99: result.p99Us,
        };
        runsOf.get(p.name)!.push(row);
        const cores = (ms: number): string => (ms / 1000 / result.seconds).toFixed(2);
        console.error(
          `# churn run ${r + 1}: ${p.name} ${Math.round(row.rate)} conn/s, ${row.cpuUs.toFixed(1)} µs CPU/conn, ` +
            `${errors} errors ${JSON.stringify(result.errors)}, connection time median ${row.median} µs p99 ${row.p99} µs; ` +
            `cores: proxy ${cores(proxyMs)}, load generator ${cores(result.cpuMs)}, backend ${cores(backendMs)}, others ${cores(otherMs)}`,
        );
      }
    }
    for (const p of peers) {
      const rs = runsOf.get(p.name)!;
      out({
        name: 'tcp-churn',
        peer: p.name,
        connPerSec: Math.round(median(rs.map((x) => x.rate))),
        cpuUsPerConnection: round(median(rs.map((x) => x.cpuUs))),
        errors: rs.reduce((n, x) => n + x.errors, 0),
        medianConnectionUs: median(rs.map((x) => x.median)),
        p99ConnectionUs: median(rs.map((x) => x.p99)),
        runs: o.runs,
        concurrency: o.concurrency,
        requestBytes: o.requestBytes,
        perRun: rs.map((x) => ({ connPerSec: Math.round(x.rate), cpuUs: round(x.cpuUs) })),
      });
    }
  } finally {
    for (const p of peers) await p.stop();
    server.kill('SIGKILL');
  }
}

/**
 * Memory per idle proxied connection, as a settled slope. After a warm-up
 * (100 connections opened and closed), `base` connections are opened and
 * held throughout (default 0; with a few thousand, the figure is the
 * marginal cost at scale). Then, while they stay open, `count` more are
 * opened in `steps` equal steps, each step's connections held while the next
 * ones open. Before the first step and after each one the proxy is settled
 * (`settle`) and its resident memory (VmRSS, summed over its processes: the
 * nginx worker, not the master) read. `bytesPerConnection` is the
 * least-squares slope of those `steps` + 1 readings against connections
 * open.
 *
 * Why settled, and a slope: this used to be one difference, RSS 2 s after
 * opening `count` connections minus RSS before, neither settled. It
 * subtracted whatever holdfast gave back in between: its "before" reading
 * held ~10 MiB that a full collection frees (young-generation pages, startup
 * garbage), and the burst's native scratch memory (see `settle`) hid the
 * native part of the next connections, so it read 435–679 B per connection,
 * −2,251 to 1,050 B with `--base 2000`, when two TCP wraps alone hold ~850 B
 * of native memory. Settled readings hold what is live (and the allocators'
 * overhead on it), and a slope over several of them does not rest on any
 * one.
 *
 * Besides the figure: `rssBeforeMiB` and `rssAfterMiB` are the first and last
 * settled readings, `endPointBytesPerConnection` their difference over
 * `count`, `r2` the fit's R² (how straight the line is), `readings` all of
 * them, and `allocatorTrimmed` whether every reading was trimmed (false
 * without gdb or with `--no-trim`: then holdfast's figure understates).
 */
async function idleMemory(
  names: PeerName[],
  count: number,
  base: number,
  steps: number,
  trim: boolean,
  out: (row: object) => void,
) {
  const backend = spawn(NODE, [join(HERE, 'lib/hold.ts'), 'server', String(BACKEND)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await waitForPort(BACKEND);
    for (const name of names) {
      const peer = await startPeer(name, BACKEND);
      if (typeof peer === 'string') {
        out({ name: 'tcp-idle-memory', peer: name, skipped: peer });
        continue;
      }
      try {
        // Warm the proxy with a few connections first so one-time allocations don't count.
        await holdConnections(PORTS[name], 100, async () => {});
        const rss = (): number => peer.pids().reduce((n, pid) => n + rssBytes(pid), 0);
        const added = (step: number): number => Math.round((count * step) / steps);
        const readings: { open: number; rss: number }[] = [];
        // Settle and read, then open the next step's connections and, while
        // they are held, go on to the next step.
        let trimmed = trim;
        const climb = async (step: number): Promise<void> => {
          trimmed = (await settle(peer, trim)) && trimmed;
          readings.push({ open: base + added(step), rss: rss() });
          if (step === steps) return;
          await holdConnections(PORTS[name], added(step + 1) - added(step), () => climb(step + 1));
        };
        if (base > 0) await holdConnections(PORTS[name], base, () => climb(0));
        else await climb(0);
        const fit = leastSquares(readings.map((r) => ({ x: r.open, y: r.rss })));
        const first = readings[0]!;
        const last = readings[readings.length - 1]!;
        out({
          name: 'tcp-idle-memory',
          peer: name,
          connections: count,
          alreadyOpen: base,
          rssBeforeMiB: round(first.rss / 2 ** 20),
          rssAfterMiB: round(last.rss / 2 ** 20),
          bytesPerConnection: Math.round(fit.slope),
          method: `settled least-squares slope over ${readings.length} readings`,
          endPointBytesPerConnection: Math.round((last.rss - first.rss) / count),
          r2: Math.round(fit.r2 * 10_000) / 10_000,
          allocatorTrimmed: trimmed,
          readings: readings.map((r) => ({ open: r.open, rssMiB: round(r.rss / 2 ** 20) })),
        });
      } finally {
        await peer.stop();
      }
    }
  } finally {
    backend.kill('SIGKILL');
  }
}

/** Open `count` connections through `port` in a client process, run `during`, close them. */
async function holdConnections(port: number, count: number, during: () => Promise<void>): Promise<void> {
  const client = spawn(NODE, [join(HERE, 'lib/hold.ts'), 'client', String(port), String(count)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`clients not ready after 60 s`)), 60_000);
      client.stdout.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
      client.once('exit', (code) => reject(new Error(`client exited with ${code}`)));
    });
    await during();
  } finally {
    client.kill('SIGKILL');
    await sleep(500);
  }
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

export async function run(args: BenchArgs): Promise<void> {
  const { values } = parseArgs({
    args: args.rest,
    options: {
      seconds: { type: 'string', default: '3' },
      runs: { type: 'string', default: '3' },
      idle: { type: 'string', default: '5000' },
      base: { type: 'string', default: '0' },
      steps: { type: 'string', default: '4' },
      trim: { type: 'boolean', default: true },
      peers: { type: 'string', default: 'holdfast,nginx,haproxy' },
      only: { type: 'string', default: 'throughput,churn,memory' },
      'churn-seconds': { type: 'string', default: '4' },
      'churn-runs': { type: 'string' },
      concurrency: { type: 'string', default: '64' },
      'request-bytes': { type: 'string', default: '64' },
      sources: { type: 'string', default: '4' },
      baseline: { type: 'string' },
    },
    allowPositionals: true,
    allowNegative: true,
  });
  if (values.baseline !== undefined) {
    const b = values.baseline;
    baselineEntry = b.endsWith('.js') ? b : join(b, 'dist/cli/main.js');
    if (!existsSync(baselineEntry))
      throw new Error(`--baseline: ${baselineEntry} does not exist (build it first)`);
  }
  const names = values.peers.split(',').filter((p): p is PeerName => p in PORTS && p !== 'direct');
  const rows: Record<string, unknown>[] = [];
  const out = (row: object): void => {
    rows.push(row as Record<string, unknown>);
    if (args.json) console.log(JSON.stringify(row));
    else console.error(`… ${JSON.stringify(row)}`);
  };
  const only = values.only.split(',');
  if (only.includes('throughput')) await throughput(names, Number(values.seconds), Number(values.runs), out);
  if (only.includes('churn'))
    await churn(
      names,
      {
        seconds: Number(values['churn-seconds']),
        runs: Number(values['churn-runs'] ?? values.runs),
        concurrency: Number(values.concurrency),
        requestBytes: Number(values['request-bytes']),
        sources: Number(values.sources),
      },
      out,
    );
  if (only.includes('memory'))
    await idleMemory(names, Number(values.idle), Number(values.base), Number(values.steps), values.trim, out);
  if (args.json) return;
  // Human summary with ratios against the peers measured in this run.
  const get = (name: string, peer: string, key: string): number | undefined =>
    rows.find((r) => r.name === name && r.peer === peer)?.[key] as number | undefined;
  const hf = get('tcp-throughput', 'holdfast', 'gbitPerSec');
  if (only.includes('throughput')) console.log('\nsingle-connection throughput (iperf3, Gbit/s, median)');
  for (const r of rows.filter((r) => r.name === 'tcp-throughput')) {
    const v = r.gbitPerSec as number | undefined;
    const ratio =
      v !== undefined && hf !== undefined && r.peer !== 'holdfast'
        ? `  holdfast/${String(r.peer)} = ${(hf / v).toFixed(2)}`
        : '';
    const c = r.cpuMsPerGB as number | undefined;
    console.log(
      `  ${String(r.peer).padEnd(20)} ${v ?? `skipped: ${String(r.skipped)}`}${c === undefined ? '' : `  (${c} ms CPU per GB)`}${ratio}`,
    );
  }
  const hc = get('tcp-churn', 'holdfast', 'cpuUsPerConnection');
  const hr = get('tcp-churn', 'holdfast', 'connPerSec');
  if (only.includes('churn'))
    console.log(
      '\nconnection churn (connect, send, read the echo, close; medians): conn/s, proxy CPU µs per connection, errors',
    );
  for (const r of rows.filter((r) => r.name === 'tcp-churn')) {
    if (r.skipped !== undefined) {
      console.log(`  ${((r.peer as string | undefined) ?? '').padEnd(20)} skipped: ${r.skipped as string}`);
      continue;
    }
    const rate = r.connPerSec as number;
    const c = r.cpuUsPerConnection as number;
    const ratio =
      hr !== undefined && hc !== undefined && r.peer !== 'holdfast'
        ? `  holdfast/${String(r.peer)} = ${(hr / rate).toFixed(2)}× conn/s, ${(hc / c).toFixed(2)}× CPU/conn`
        : '';
    console.log(
      `  ${String(r.peer).padEnd(20)} ${rate} conn/s  ${c} µs CPU/conn  ${String(r.errors)} errors  (p99 ${String(r.p99ConnectionUs)} µs)${ratio}`,
    );
  }
  const hm = get('tcp-idle-memory', 'holdfast', 'bytesPerConnection');
  if (only.includes('memory'))
    console.log(
      `\nmemory per idle proxied connection (bytes per added connection: settled least-squares slope, ${values.base} to ${Number(values.base) + Number(values.idle)} open)`,
    );
  for (const r of rows.filter((r) => r.name === 'tcp-idle-memory')) {
    const v = r.bytesPerConnection as number | undefined;
    const ratio =
      v !== undefined && hm !== undefined && r.peer !== 'holdfast'
        ? `  holdfast/${String(r.peer)} = ${(hm / v).toFixed(2)}`
        : '';
    const untrimmed = r.allocatorTrimmed === false ? '  (allocator not trimmed: understates)' : '';
    console.log(`  ${String(r.peer).padEnd(20)} ${v ?? `skipped: ${String(r.skipped)}`}${ratio}${untrimmed}`);
  }
}
