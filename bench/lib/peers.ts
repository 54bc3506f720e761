/**
 * Start the proxies a benchmark compares holdfast with, each configured as
 * alike as their configs allow: one worker / one thread, plain L4 or HTTP
 * proxying to the same backend. A peer that is not installed is reported and
 * skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from 'node:net';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const NODE = process.execPath;

export interface RunningPeer {
  name: string;
  /** PIDs whose memory counts as the proxy's (nginx: the worker, not the master). */
  pids(): number[];
  /**
   * Ask the process for a full collection (holdfast started with
   * `preloadGc`; returns at once, the collection runs in the process). Absent
   * for peers that have no garbage collector.
   */
  collectGarbage?(): void;
  stop(): Promise<void>;
}

export function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path !== '' ? path : undefined;
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `holdfast-bench-${prefix}-`));
}

/** Wait until something accepts TCP connections on the port. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: '127.0.0.1' });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline)
      throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 3_000).unref();
  });
}

let built: string | undefined;

/**
 * What users run: the compiled dist/cli/main.js, built once per bench run
 * (`tsc -p tsconfig.build.json`). Running the TypeScript sources instead
 * would add Node's type-stripping to the heap (~4 MB more for every major GC
 * to mark). HOLDFAST_BENCH_FROM_SRC=1 benches the sources;
 * HOLDFAST_BENCH_ENTRY=path/to/cli/main.js another build (an A/B of benches
 * that have no option for it, run alternately with and without).
 */
export function holdfastEntry(): string {
  if (process.env.HOLDFAST_BENCH_ENTRY !== undefined) return process.env.HOLDFAST_BENCH_ENTRY;
  if (process.env.HOLDFAST_BENCH_FROM_SRC === '1') return join(ROOT, 'src/cli/main.ts');
  if (built === undefined) {
    const tsc = join(ROOT, 'node_modules/.bin/tsc');
    const r = spawnSync(tsc, ['-p', join(ROOT, 'tsconfig.build.json')], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`building dist/ failed: ${r.stdout}${r.stderr}`);
    built = join(ROOT, 'dist/cli/main.js');
  }
  return built;
}

/** The Node flags of the `holdfast` launcher (src/cli/main.ts's first line). */
export const LAUNCHER_FLAGS = '--max-semi-space-size=8 --no-allocation-site-pretenuring --expose-gc';

/** Bench-only preload: SIGUSR2 runs a full, memory-reducing collection (see the file). */
export const GC_ON_SIGNAL = join(ROOT, 'bench/lib/gc-on-signal.mjs');

export interface HoldfastOptions {
  /**
   * Load bench/lib/gc-on-signal.mjs, so that `settle` (SIGUSR2) can ask the
   * process for a full collection before a memory reading. Needs `--expose-gc`
   * in the flags (the launcher's flags have it).
   */
  preloadGc?: boolean;
  /**
   * Another build's `dist/cli/main.js` to run instead of this checkout's (an
   * A/B against a baseline build, interleaved in the same run), and the name
   * the peer is reported under.
   */
  entry?: { path: string; name: string };
}

export async function startHoldfast(
  yaml: string,
  port: number,
  options: HoldfastOptions = {},
): Promise<RunningPeer> {
  const dir = tempDir('holdfast');
  const file = join(dir, 'holdfast.yaml');
  writeFileSync(file, yaml);
  // The same V8 flags and allocator setting the `holdfast` launcher uses
  // (see src/cli/main.ts's first line).
  const flags = (process.env.HOLDFAST_BENCH_NODE_FLAGS ?? LAUNCHER_FLAGS).split(' ').filter((f) => f !== '');
  if (options.preloadGc === true) flags.push('--import', GC_ON_SIGNAL);
  const entry = options.entry?.path ?? holdfastEntry();
  const child = spawn(NODE, [...flags, entry, 'serve', '--config', file, '--json'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1' },
  });
  await waitForPort(port);
  const peer: RunningPeer = {
    name: options.entry?.name ?? 'holdfast',
    pids: () => [child.pid!],
    stop: () => stopChild(child),
  };
  if (options.preloadGc === true) {
    peer.collectGarbage = () => {
      if (!child.kill('SIGUSR2')) throw new Error('holdfast is gone: could not signal it to collect');
    };
  }
  return peer;
}

export async function startNginx(
  body: string,
  port: number,
  modules: string[] = [],
): Promise<RunningPeer | string> {
  const bin = which('nginx');
  if (bin === undefined) return 'nginx not installed (apt-get install nginx libnginx-mod-stream)';
  const loads: string[] = [];
  for (const m of modules) {
    const path = `/usr/lib/nginx/modules/${m}.so`;
    if (!existsSync(path)) return `nginx module ${m} not installed (apt-get install libnginx-mod-stream)`;
    loads.push(`load_module ${path};`);
  }
  const dir = tempDir('nginx');
  const conf = join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    `${loads.join('\n')}
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 19000; multi_accept on; }
${body}
`,
  );
  const child = spawn(bin, ['-c', conf, '-p', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port);
  const workers = (): number[] =>
    spawnSync('pgrep', ['-P', String(child.pid)], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter((l) => l !== '')
      .map(Number);
  return { name: 'nginx', pids: workers, stop: () => stopChild(child) };
}

export async function startHaproxy(body: string, port: number): Promise<RunningPeer | string> {
  const bin = which('haproxy');
  if (bin === undefined) return 'haproxy not installed (apt-get install haproxy)';
  const dir = tempDir('haproxy');
  const conf = join(dir, 'haproxy.cfg');
  writeFileSync(
    conf,
    `global
  maxconn 9500
  nbthread 1
defaults
  timeout connect 5s
  timeout client 1h
  timeout server 1h
${body}
`,
  );
  const child = spawn(bin, ['-f', conf, '-db'], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port);
  return { name: 'haproxy', pids: () => [child.pid!], stop: () => stopChild(child) };
}

/** Resident memory of a process in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m === null ? 0 : Number(m[1]) * 1024;
}

/**
 * Ask glibc's allocator in a running process to give its free pages back to
 * the system: `malloc_trim(0)` called through gdb (attached for about a
 * second, the process stopped meanwhile). free() returns memory to the
 * system only from the top of the heap; pages of free chunks in the middle
 * stay resident until they are reused or trimmed. Returns false when gdb is
 * not installed or the call did not run (no permission to attach, no glibc).
 */
export function mallocTrim(pid: number): boolean {
  if (which('gdb') === undefined) return false;
  const r = spawnSync('gdb', ['-p', String(pid), '-batch', '-nx', '-ex', 'call (int) malloc_trim(0)'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return r.status === 0 && /^\$1 = [01]$/m.test(r.stdout);
}

/** CPU time (user + system) of a process in ms, from /proc/PID/stat. */
export function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}

/**
 * CPU time the whole machine has spent busy (all cores: user, nice, system,
 * irq, softirq, steal) in ms, from /proc/stat.
 */
export function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const ticks = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
}

/**
 * Wait (up to `maxMs`) until the machine is quiet: less than `cores` of CPU
 * busy over half a second. On a small machine anything else running (a
 * build, a test suite) takes CPU from the proxy, the backend or the load
 * generator and shows up in the tail; a run that starts on a busy machine
 * says more about the machine than about the proxy. Returns false when it
 * stayed busy.
 */
export async function waitForQuiet(maxMs = 30_000, cores = 0.08): Promise<boolean> {
  const windowMs = 500;
  const until = performance.now() + maxMs;
  while (performance.now() < until) {
    const before = machineBusyMs();
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    if (machineBusyMs() - before <= cores * windowMs) return true;
  }
  return false;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Pause before and after the collection that settles a proxy before a memory reading. */
const SETTLE_MS = 1_000;

/**
 * Bring a proxy to a settled state before a memory reading, the same way for
 * every peer: a pause (the last connections' setup is over, closed handles
 * are gone); a full memory-reducing collection for holdfast (SIGUSR2 to
 * bench/lib/gc-on-signal.mjs; nginx and HAProxy have no collector); another
 * pause (the collection, V8's concurrent sweeping and the release of its
 * empty pages are over); then, with `trim`, glibc's `malloc_trim(0)` in
 * every process of the proxy (bench/lib/peers.ts mallocTrim). The trim is
 * what makes holdfast's readings a line: the burst of the first connections
 * leaves ~4–5 MiB of freed native memory in the middle of glibc's heap,
 * resident (V8's optimising compilers' scratch memory: with `--no-opt
 * --no-maglev` the jump is gone), and the next ~4,000 connections' native
 * parts reuse it, so with a full collection alone RSS barely grows over them
 * and the slope from 0 to 5,000 reads ~1,150–1,250 B with R² ≈ 0.7. That
 * memory is a one-time cost, not a per-connection one. Returns whether every
 * process was trimmed.
 */
export async function settle(peer: RunningPeer, trim: boolean): Promise<boolean> {
  await sleep(SETTLE_MS);
  peer.collectGarbage?.();
  await sleep(SETTLE_MS);
  return trim && peer.pids().every((pid) => mallocTrim(pid));
}

/** Least-squares line through the points: its slope and R². */
export function leastSquares(points: readonly { x: number; y: number }[]): { slope: number; r2: number } {
  const n = points.length;
  const mx = points.reduce((a, p) => a + p.x, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (const p of points) {
    sxy += (p.x - mx) * (p.y - my);
    sxx += (p.x - mx) ** 2;
    syy += (p.y - my) ** 2;
  }
  const slope = sxy / sxx;
  return { slope, r2: syy === 0 ? 1 : (sxy * sxy) / (sxx * syy) };
}
