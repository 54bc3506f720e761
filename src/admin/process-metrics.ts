import { readdirSync, readFileSync } from 'node:fs';
import { Counter, Gauge, type Registry } from 'prom-client';
import { ownedReadBuffers, readBufferBoundHits } from '../proxy/socket-reads.ts';
import { memoryReductions } from '../memory-reducer.ts';
import { openLegs } from '../proxy/stream-leg.ts';

/**
 * The process's own metrics (CPU, memory, heap, file descriptors, event-loop
 * lag), all read when scraped.
 *
 * Written here rather than taken from prom-client's `collectDefaultMetrics`:
 * that one keeps a PerformanceObserver on every garbage collection (for a GC
 * duration histogram) and an event-loop delay monitor that wakes the loop
 * every 10 ms. Under HTTP load the GC observer alone cost 1–1.5 % of a core
 * (a scavenge every ~180 requests, each one queued to JavaScript), and idle
 * wake-ups are what an idle gateway holding thousands of connections should
 * not spend. GC time shows in CPU time; lag is sampled at scrape time.
 */
export function registerProcessMetrics(registry: Registry, prefix: string): void {
  const registers = [registry];
  const startSeconds = Math.round(Date.now() / 1000 - process.uptime());
  new Counter({
    name: `${prefix}process_cpu_seconds_total`,
    help: 'User and system CPU time spent, in seconds.',
    registers,
    collect() {
      const u = process.cpuUsage();
      this.reset();
      this.inc((u.user + u.system) / 1e6);
    },
  });
  new Gauge({
    name: `${prefix}process_resident_memory_bytes`,
    help: 'Resident memory size in bytes.',
    registers,
    collect() {
      this.set(process.memoryUsage.rss());
    },
  });
  new Gauge({
    name: `${prefix}process_start_time_seconds`,
    help: 'Start time of the process since the Unix epoch, in seconds.',
    registers,
    aggregator: 'min',
    collect() {
      this.set(startSeconds);
    },
  });
  new Gauge({
    name: `${prefix}process_open_fds`,
    help: 'Open file descriptors (each proxied connection holds two).',
    registers,
    collect() {
      try {
        this.set(readdirSync('/proc/self/fd').length);
      } catch {
        // Not Linux: no /proc. The gauge stays unset.
      }
    },
  });
  new Gauge({
    name: `${prefix}process_max_fds`,
    help: 'Limit on open file descriptors (RLIMIT_NOFILE, soft).',
    registers,
    collect() {
      try {
        const m = /Max open files\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'));
        if (m !== null) this.set(Number(m[1]));
      } catch {
        // Not Linux.
      }
    },
  });
  new Gauge({
    name: `${prefix}nodejs_heap_size_used_bytes`,
    help: 'V8 heap in use, in bytes.',
    registers,
    collect() {
      this.set(process.memoryUsage().heapUsed);
    },
  });
  new Gauge({
    name: `${prefix}nodejs_heap_size_total_bytes`,
    help: 'V8 heap reserved, in bytes.',
    registers,
    collect() {
      this.set(process.memoryUsage().heapTotal);
    },
  });
  new Gauge({
    name: `${prefix}nodejs_external_memory_bytes`,
    help: 'Memory of buffers and other objects outside the V8 heap, in bytes.',
    registers,
    collect() {
      this.set(process.memoryUsage().external);
    },
  });
  new Gauge({
    name: `${prefix}nodejs_eventloop_lag_seconds`,
    help: 'How late a callback queued at scrape time ran: how busy the event loop is.',
    registers,
    aggregator: 'max',
    async collect() {
      const start = process.hrtime.bigint();
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.set(Number(process.hrtime.bigint() - start) / 1e9);
    },
  });
  new Gauge({
    name: `${prefix}read_buffers_owned`,
    help: 'Busy relay sockets holding a 64 KiB read buffer of their own (at most 256 per process).',
    registers,
    collect() {
      this.set(ownedReadBuffers());
    },
  });
  new Counter({
    name: `${prefix}read_buffer_bound_hits_total`,
    help: 'Reads that would have given a busy socket its own buffer but found the bound reached (copied instead).',
    registers,
    collect() {
      this.reset();
      this.inc(readBufferBoundHits());
    },
  });
  new Counter({
    name: `${prefix}memory_reductions_total`,
    help: 'Memory-reducing collections asked of V8 once the process went quiet with much unused heap.',
    registers,
    collect() {
      this.reset();
      this.inc(memoryReductions());
    },
  });
  new Gauge({
    name: `${prefix}relay_legs`,
    help:
      'Open relay sockets (TCP and WebSocket connections) by how they are driven: "handle" (lean, libuv handle ' +
      'directly) or "socket" (net.Socket: TLS, or a fallback where Node internals were missing).',
    labelNames: ['kind'],
    registers,
    collect() {
      const legs = openLegs();
      this.set({ kind: 'handle' }, legs.handle);
      this.set({ kind: 'socket' }, legs.socket);
    },
  });
  new Gauge({
    name: `${prefix}nodejs_version_info`,
    help: 'The Node.js version running holdfast.',
    labelNames: ['version'],
    registers,
    aggregator: 'first',
    collect() {
      this.set({ version: process.version }, 1);
    },
  });
}
