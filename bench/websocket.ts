/**
 * `npm run bench -- websocket [--json] [--conns 5000] [--seconds 3] [--cpu-seconds 20] [--runs 3]`
 *
 * holdfast side by side with nginx and HAProxy (each measured in this run,
 * one worker/thread each, the same ws echo backend), every party in its own
 * process: message relay throughput (50 connections, 1 KiB messages, 16 in
 * flight each), memory per idle proxied WebSocket with N open (RSS delta of
 * the proxy process / N), and the proxy's CPU over an idle window with N
 * open — for holdfast that is the cost of its heartbeats (10 s interval,
 * both legs); nginx and HAProxy send none. The CPU window starts once the
 * connections are set up and spans whole heartbeat intervals (default 2);
 * a second window of the same length follows, once the collections that the
 * burst of handshakes sets off (and holdfast's memory reducer) are over.
 * holdfast starts as shipped (bench/lib/peers.ts startHoldfast: the launcher's
 * V8 flags and allocator setting). For holdfast, "after the idle window"
 * understates: the memory reducer's collection also frees what the process
 * held before the connections came (see bench/RESULTS.md). Runs are
 * interleaved (holdfast, nginx, haproxy, holdfast, …) and medians reported.
 * Missing peers are reported and skipped.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../test/helpers/net.ts';
import { ask, startWsLoad } from './lib/ws-load.ts';
import { cpuMs, median, rssBytes, startHoldfast } from './lib/peers.ts';
import type { BenchArgs } from './run.ts';

interface Result {
  bench: 'websocket';
  proxy: string;
  version: string;
  throughputMsgsPerSec?: number;
  idleConnections?: number;
  memoryPerIdleBytes?: number;
  /** The same, measured again at the end of the idle CPU window (steady state, after the GC has settled). */
  memoryPerIdleSteadyBytes?: number;
  idleCpuPercentOfCore?: number;
  /** The next window of the same length: heartbeats only, the burst's collections behind. */
  idleCpuSteadyPercentOfCore?: number;
  skipped?: string;
}

/** The CPU `pid` uses over the next `ms`, in % of one core. */
async function cpuPercentOver(pid: number, ms: number): Promise<number> {
  const c0 = cpuMs(pid);
  const w0 = performance.now();
  await sleep(ms);
  return Number((((cpuMs(pid) - c0) / (performance.now() - w0)) * 100).toFixed(2));
}

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Progress on stderr with BENCH_DEBUG=1. */
function debug(m: string): void {
  if (process.env.BENCH_DEBUG !== undefined) process.stderr.write(`${m}\n`);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitListening(port: number, child: ChildProcess): Promise<void> {
  const { connect } = await import('node:net');
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: '127.0.0.1' });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`nothing listening on ${port}`);
}

interface Started {
  pid: number;
  stop(): Promise<void>;
}

interface Peer {
  name: string;
  version: string;
  start(port: number, backend: number, dir: string): Promise<Started>;
}

/** A peer spawned here: wait until it listens. */
async function spawned(child: ChildProcess, port: number): Promise<Started> {
  await waitListening(port, child);
  return {
    pid: child.pid!,
    stop: async () => {
      child.kill('SIGKILL');
      if (child.exitCode === null && child.signalCode === null) await once(child, 'exit').catch(() => {});
    },
  };
}

function peers(): { available: Peer[]; missing: string[] } {
  const available: Peer[] = [];
  const missing: string[] = [];
  available.push({
    name: 'holdfast',
    version: `node ${process.versions.node}`,
    async start(port, backend) {
      const hf = await startHoldfast(
        [
          'log: { level: warn }',
          'services:',
          '  - name: ws',
          '    protocol: http',
          `    listen: 127.0.0.1:${port}`,
          `    backends: { static: [127.0.0.1:${backend}] }`,
          '    websocket: { ping: { interval: 10s, timeout: 5s } }',
          '    maxConnectionAge: off',
        ].join('\n'),
        port,
      );
      return { pid: hf.pids()[0]!, stop: () => hf.stop() };
    },
  });
  const nginx = which('nginx');
  if (nginx === undefined) missing.push('nginx');
  else {
    const v = spawnSync(nginx, ['-v'], { encoding: 'utf8' }).stderr.trim().replace('nginx version: ', '');
    available.push({
      name: 'nginx',
      version: v,
      start(port, backend, dir) {
        writeFileSync(
          join(dir, 'nginx.conf'),
          `daemon off; master_process off; worker_processes 1; error_log stderr error; pid ${dir}/nginx.pid;
worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
  upstream be { least_conn; server 127.0.0.1:${backend}; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / {
      proxy_pass http://be; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h; proxy_send_timeout 1h;
    }
  }
}
`,
        );
        return spawned(spawn(nginx, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: 'ignore' }), port);
      },
    });
  }
  const haproxy = which('haproxy');
  if (haproxy === undefined) missing.push('haproxy');
  else {
    const v = /version (\S+)/.exec(spawnSync(haproxy, ['-v'], { encoding: 'utf8' }).stdout)?.[1] ?? '?';
    available.push({
      name: 'haproxy',
      version: v,
      start(port, backend, dir) {
        writeFileSync(
          join(dir, 'haproxy.cfg'),
          `global
  maxconn 9000
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:${port}
  default_backend be
backend be
  balance leastconn
  server s1 127.0.0.1:${backend}
`,
        );
        return spawned(spawn(haproxy, ['-f', join(dir, 'haproxy.cfg'), '-db'], { stdio: 'ignore' }), port);
      },
    });
  }
  return { available, missing };
}

export async function run(args: BenchArgs): Promise<void> {
  const { values } = parseArgs({
    args: args.rest,
    options: {
      conns: { type: 'string', default: '5000' },
      seconds: { type: 'string', default: '3' },
      'cpu-seconds': { type: 'string', default: '20' },
      runs: { type: 'string', default: '3' },
    },
    strict: false,
  });
  const idleConns = Number(values.conns);
  const seconds = Number(values.seconds);
  const cpuSeconds = Number(values['cpu-seconds']);
  const runs = Number(values.runs);
  const dir = mkdtempSync(join(tmpdir(), 'holdfast-bench-ws-'));
  const load = await startWsLoad();
  const { backendPort: backend, clients } = load;
  const { available, missing } = peers();
  const results: Result[] = [];
  for (const name of missing) {
    const r: Result = {
      bench: 'websocket',
      proxy: name,
      version: '',
      skipped: `${name} is not installed (apt-get install ${name})`,
    };
    results.push(r);
    if (args.json) console.log(JSON.stringify(r));
    else console.log(`skipped ${name}: not installed`);
  }
  const samples = new Map<string, Result[]>(available.map((p) => [p.name, []]));
  try {
    for (let run = 0; run < runs; run++) {
      for (const peer of available) {
        const port = await freePort();
        debug(`run ${run + 1}: starting ${peer.name}`);
        const r: Result = { bench: 'websocket', proxy: peer.name, version: peer.version };
        let started: Started | undefined;
        try {
          started = await peer.start(port, backend, dir);
          debug('listening');
          await sleep(500);
          const pid = started.pid;
          const before = rssBytes(pid);
          await ask(clients, { cmd: 'open', port, n: idleConns });
          debug('opened');
          await sleep(2000);
          r.idleConnections = idleConns;
          r.memoryPerIdleBytes = Math.round((rssBytes(pid) - before) / idleConns);
          // The connections are set up; measure over whole heartbeat intervals.
          r.idleCpuPercentOfCore = await cpuPercentOver(pid, cpuSeconds * 1000);
          r.memoryPerIdleSteadyBytes = Math.round((rssBytes(pid) - before) / idleConns);
          // A second window: what the heartbeats alone cost, once the
          // collections that follow the burst of handshakes are over.
          r.idleCpuSteadyPercentOfCore = await cpuPercentOver(pid, cpuSeconds * 1000);
          debug('cpu measured');
          await ask(clients, { cmd: 'close' });
          await sleep(500);
          const t = await ask<{ msgsPerSec: number }>(clients, {
            cmd: 'throughput',
            port,
            conns: 50,
            seconds,
            size: 1024,
            window: 16,
          });
          r.throughputMsgsPerSec = Math.round(t.msgsPerSec);
        } catch (err) {
          r.skipped = `failed: ${String(err)}`;
        } finally {
          await started?.stop();
        }
        samples.get(peer.name)!.push(r);
        if (args.json) console.log(JSON.stringify({ ...r, run: run + 1 }));
        else debug(JSON.stringify(r));
      }
    }
  } finally {
    load.stop();
  }
  for (const peer of available) {
    const rs = samples.get(peer.name)!.filter((r) => r.skipped === undefined);
    const pick = (f: (r: Result) => number | undefined): number | undefined => {
      const xs = rs.map(f).filter((x): x is number => x !== undefined);
      return xs.length === 0 ? undefined : median(xs);
    };
    const r: Result = {
      bench: 'websocket',
      proxy: peer.name,
      version: peer.version,
      idleConnections: idleConns,
      throughputMsgsPerSec: pick((x) => x.throughputMsgsPerSec),
      memoryPerIdleBytes: pick((x) => x.memoryPerIdleBytes),
      memoryPerIdleSteadyBytes: pick((x) => x.memoryPerIdleSteadyBytes),
      idleCpuPercentOfCore: pick((x) => x.idleCpuPercentOfCore),
      idleCpuSteadyPercentOfCore: pick((x) => x.idleCpuSteadyPercentOfCore),
    };
    if (rs.length === 0) r.skipped = samples.get(peer.name)![0]?.skipped ?? 'no run';
    results.push(r);
    if (args.json) console.log(JSON.stringify({ ...r, median: true, runs }));
  }
  if (!args.json) {
    console.log(
      `\nwebsocket relay, ${idleConns} idle connections, 1 KiB messages (msgs/s are echoed round trips); medians of ${runs} runs, idle CPU over the ${cpuSeconds} s after opening and the ${cpuSeconds} s after that\n`,
    );
    console.log(
      '| proxy | version | relay msgs/s | memory per idle WS (2 s after opening) | (after the idle window) | idle CPU (% of a core) | (next window) |',
    );
    console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
    for (const r of results) {
      if (r.skipped !== undefined && r.throughputMsgsPerSec === undefined) {
        console.log(`| ${r.proxy} | ${r.version} | skipped: ${r.skipped} | | | | |`);
        continue;
      }
      console.log(
        `| ${r.proxy} | ${r.version} | ${r.throughputMsgsPerSec ?? '-'} | ${r.memoryPerIdleBytes ?? '-'} B | ${r.memoryPerIdleSteadyBytes ?? '-'} B | ${r.idleCpuPercentOfCore ?? '-'} | ${r.idleCpuSteadyPercentOfCore ?? '-'} |`,
      );
    }
  }
}
