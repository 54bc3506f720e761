/**
 * `npm run bench -- tcp [--json] [--seconds N] [--runs N] [--idle N]`
 *
 * holdfast's TCP proxy side by side with nginx's stream proxy and HAProxy in
 * TCP mode, in one run on this machine:
 *   - single-connection throughput (iperf3 through each proxy), median of runs;
 *   - memory per idle proxied connection with N (default 5,000) open: growth
 *     of the proxy's resident memory from before to after, divided by N.
 * Every proxy runs one worker / one thread, as holdfast does.
 */
import { spawn, spawnSync } from 'node:child_process';
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
  waitForPort,
  which,
} from './lib/peers.ts';

const HERE = new URL('.', import.meta.url).pathname;
const BACKEND = 17_101;
const PORTS = { direct: BACKEND, holdfast: 17_001, nginx: 17_002, haproxy: 17_003 } as const;
type PeerName = 'holdfast' | 'nginx' | 'haproxy';

function startPeer(name: PeerName, backend: number): Promise<RunningPeer | string> {
  const port = PORTS[name];
  switch (name) {
    case 'holdfast':
      return startHoldfast(
        `services:\n  - name: bench\n    listen: 127.0.0.1:${port}\n    backends: { static: [127.0.0.1:${backend}] }\n    limits: { maxConnections: 9800 }\n`,
        port,
      );
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

/**
 * Memory per idle proxied connection: resident memory with `count` more
 * connections open, minus before, over `count`. `base` connections are held
 * open throughout (default 0): with a few thousand, the figure is the
 * marginal cost at scale, with the heap's one-time growth steps already paid.
 */
async function idleMemory(names: PeerName[], count: number, base: number, out: (row: object) => void) {
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
        await sleep(1_000);
        const rss = (): number => peer.pids().reduce((n, pid) => n + rssBytes(pid), 0);
        let before = 0;
        let after = 0;
        const measure = async (): Promise<void> => {
          await sleep(1_000);
          before = rss();
          await holdConnections(PORTS[name], count, async () => {
            await sleep(2_000);
            after = rss();
          });
        };
        if (base > 0) await holdConnections(PORTS[name], base, measure);
        else await measure();
        out({
          name: 'tcp-idle-memory',
          peer: name,
          connections: count,
          alreadyOpen: base,
          rssBeforeMiB: round(before / 2 ** 20),
          rssAfterMiB: round(after / 2 ** 20),
          bytesPerConnection: Math.round((after - before) / count),
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
      peers: { type: 'string', default: 'holdfast,nginx,haproxy' },
      only: { type: 'string', default: 'throughput,memory' },
    },
    allowPositionals: true,
  });
  const names = values.peers.split(',').filter((p): p is PeerName => p in PORTS && p !== 'direct');
  const rows: Record<string, unknown>[] = [];
  const out = (row: object): void => {
    rows.push(row as Record<string, unknown>);
    if (args.json) console.log(JSON.stringify(row));
    else console.error(`… ${JSON.stringify(row)}`);
  };
  const only = values.only.split(',');
  if (only.includes('throughput')) await throughput(names, Number(values.seconds), Number(values.runs), out);
  if (only.includes('memory')) await idleMemory(names, Number(values.idle), Number(values.base), out);
  if (args.json) return;
  // Human summary with ratios against the peers measured in this run.
  const get = (name: string, peer: string, key: string): number | undefined =>
    rows.find((r) => r.name === name && r.peer === peer)?.[key] as number | undefined;
  const hf = get('tcp-throughput', 'holdfast', 'gbitPerSec');
  console.log('\nsingle-connection throughput (iperf3, Gbit/s, median)');
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
  const hm = get('tcp-idle-memory', 'holdfast', 'bytesPerConnection');
  console.log(`\nmemory per idle proxied connection (${values.idle} open, bytes)`);
  for (const r of rows.filter((r) => r.name === 'tcp-idle-memory')) {
    const v = r.bytesPerConnection as number | undefined;
    const ratio =
      v !== undefined && hm !== undefined && r.peer !== 'holdfast'
        ? `  holdfast/${String(r.peer)} = ${(hm / v).toFixed(2)}`
        : '';
    console.log(`  ${String(r.peer).padEnd(20)} ${v ?? `skipped: ${String(r.skipped)}`}${ratio}`);
  }
}
