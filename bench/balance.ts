/**
 * `npm run bench -- balance [--json] [--quick]`: the balancing core alone.
 *
 * - maglev-build: table build time (median after warm-up) and max/mean entries.
 * - maglev-disruption: fraction of slots that change when one backend of N+1
 *   is removed (and added back), over the ideal 1/(N+1); median over several
 *   choices of the backend.
 * - lookup: ns per pick through the public `pick(ctx)` (hash + table read) and
 *   per raw hash, plus the other policies' picks; heap bytes per pick to show
 *   the hot paths allocate nothing.
 *
 * Keep runs short: the machine is shared.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import type { BenchArgs } from './run.ts';
import { hashFiveTuple31, hashSourceIp31 } from '../src/balance/hash.ts';
import { createBalancer } from '../src/balance/index.ts';
import {
  buildMaglevTable,
  MaglevBalancer,
  tableDisruption,
  type MaglevBackend,
} from '../src/balance/maglev.ts';
import type { PickContext, Target } from '../src/balance/types.ts';

interface Row {
  name: string;
  [key: string]: string | number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function backends(n: number): MaglevBackend[] {
  return Array.from({ length: n }, (_, i) => ({
    key: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:8080`,
    weight: 1,
  }));
}

interface MutableTarget extends Target {
  load: number;
}

function targets(n: number): MutableTarget[] {
  return backends(n).map((b, i) => ({ key: b.key, weight: b.weight, load: i % 7, since: -Infinity }));
}

function benchBuild(n: number, m: number, warmup: number, runs: number): Row {
  const bs = backends(n);
  for (let i = 0; i < warmup; i++) buildMaglevTable(bs, m);
  const times: number[] = [];
  let table = buildMaglevTable(bs, m);
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    table = buildMaglevTable(bs, m);
    times.push(performance.now() - t0);
  }
  let max = 0;
  for (const c of table.counts) if (c > max) max = c;
  return {
    name: 'maglev-build',
    n,
    m,
    buildMs: round(median(times)),
    maxOverMean: round(max / (m / n), 5),
    runs,
  };
}

function benchDisruption(n: number, m: number, samples: number): Row {
  const bs = backends(n + 1);
  const full = buildMaglevTable(bs, m);
  const ratios: number[] = [];
  for (let k = 0; k < samples; k++) {
    const drop = Math.floor(((k + 0.5) * (n + 1)) / samples);
    const less = buildMaglevTable(
      bs.filter((_, i) => i !== drop),
      m,
    );
    ratios.push(tableDisruption(full, less) * (n + 1));
  }
  return { name: 'maglev-disruption', n, m, disruptionOverIdeal: round(median(ratios)), samples };
}

let gcCount = 0;
const gcObserver = new PerformanceObserver((list) => (gcCount += list.getEntries().length));

/** Time `ops` calls of `fn(i)`; median ns/op over `runs`, heap bytes/op of a GC-free run. */
function timeLoop(fn: (i: number) => unknown, ops: number, runs: number): { ns: number; bytesPerOp: number } {
  let sink = 0;
  for (let i = 0; i < ops; i++) if (fn(i) === undefined) sink++; // warm-up, let the JIT settle
  const results: number[] = [];
  let bytesPerOp = NaN;
  for (let r = 0; r < runs; r++) {
    const gcBefore = gcCount;
    const heapBefore = getHeapStatistics().used_heap_size;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ops; i++) if (fn(i) === undefined) sink++;
    const elapsed = Number(process.hrtime.bigint() - t0);
    const heapAfter = getHeapStatistics().used_heap_size;
    results.push(elapsed / ops);
    if (gcCount === gcBefore && Number.isNaN(bytesPerOp))
      bytesPerOp = Math.max(0, heapAfter - heapBefore) / ops;
  }
  if (sink < 0) console.log(sink);
  return { ns: median(results), bytesPerOp };
}

/** A flat string, as strings from sockets are (template literals may build rope strings). */
function flat(s: string): string {
  return Buffer.from(s).toString();
}

/** Pick contexts as a listener would build them (fresh strings, varied clients). */
function contexts(count: number, ipv6: boolean): PickContext[] {
  return Array.from({ length: count }, (_, i) => ({
    now: 0,
    clientIp: flat(
      ipv6
        ? `2001:db8:${(i & 0xff).toString(16)}::${((i * 7) & 0xfff).toString(16)}`
        : `10.${(i >> 12) & 255}.${(i >> 4) & 255}.${(i * 13) & 255}`,
    ),
    clientPort: 32768 + (i % 28000),
    // A distinct string per connection, as socket.localAddress gives (the hash's one-entry cache compares content).
    localIp: Buffer.from(ipv6 ? '2001:db8:ffff::1' : '10.255.0.1').toString(),
    localPort: 443,
  }));
}

function benchLookups(quick: boolean): Row[] {
  const ops = quick ? 200_000 : 1_000_000;
  const runs = quick ? 3 : 7;
  const ctxs = contexts(4096, false);
  const ctxs6 = contexts(4096, true);
  const mask = ctxs.length - 1;
  const rows: Row[] = [];
  const row = (
    name: string,
    n: number | undefined,
    m: number | undefined,
    r: { ns: number; bytesPerOp: number },
  ): void => {
    const out: Row = { name };
    if (n !== undefined) out.n = n;
    if (m !== undefined) out.m = m;
    out.lookupNs = round(r.ns, 1);
    out.allocBytesPerOp = Number.isNaN(r.bytesPerOp) ? -1 : round(r.bytesPerOp, 2);
    rows.push(out);
  };

  row(
    'hash-five-tuple',
    undefined,
    undefined,
    timeLoop(
      (i) => {
        const c = ctxs[i & mask]!;
        return hashFiveTuple31(c.clientIp!, c.clientPort!, c.localIp!, c.localPort!);
      },
      ops,
      runs,
    ),
  );
  row(
    'hash-source-ip',
    undefined,
    undefined,
    timeLoop((i) => hashSourceIp31(ctxs[i & mask]!.clientIp!, 24, 64), ops, runs),
  );
  for (const [n, m] of [
    [100, 65537],
    [1000, 655373],
  ] as const) {
    const b = new MaglevBalancer<MutableTarget>({ tableSize: m });
    b.setTargets(targets(n));
    row(
      'maglev-lookup-five-tuple',
      n,
      m,
      timeLoop((i) => b.pick(ctxs[i & mask]!), ops, runs),
    );
  }
  {
    const b = new MaglevBalancer<MutableTarget>();
    b.setTargets(targets(100));
    row(
      'maglev-lookup-five-tuple-ipv6',
      100,
      65537,
      timeLoop((i) => b.pick(ctxs6[i & mask]!), ops, runs),
    );
  }
  const sip = new MaglevBalancer<MutableTarget>({ hashKey: 'source-ip', netmask: 24 });
  sip.setTargets(targets(100));
  row(
    'maglev-lookup-source-ip',
    100,
    65537,
    timeLoop((i) => sip.pick(ctxs[i & mask]!), ops, runs),
  );

  const policyOps = quick ? 100_000 : 300_000;
  for (const policy of ['least-connections', 'round-robin', 'random', 'p2c'] as const) {
    const b = createBalancer<MutableTarget>(policy);
    b.setTargets(targets(100));
    row(
      `pick-${policy}`,
      100,
      undefined,
      timeLoop((i) => b.pick(ctxs[i & mask]!), policyOps, runs),
    );
  }
  const persist = createBalancer<MutableTarget>('least-connections', {
    persistence: { timeoutMs: 300_000, netmask: 24 },
  });
  persist.setTargets(targets(100));
  row(
    'pick-persistence-least-connections',
    100,
    undefined,
    timeLoop((i) => persist.pick(ctxs[i & mask]!), policyOps, runs),
  );
  return rows;
}

export async function run(args: BenchArgs): Promise<void> {
  const quick = args.rest.includes('--quick');
  gcObserver.observe({ entryTypes: ['gc'] });
  const rows: Row[] = [];
  const emit = (r: Row): void => {
    rows.push(r);
    if (args.json) console.log(JSON.stringify(r));
  };
  emit(benchBuild(100, 65537, 5, quick ? 5 : 15));
  emit(benchBuild(1000, 65537, 5, quick ? 5 : 15));
  emit(benchBuild(100, 655373, 2, quick ? 3 : 7));
  emit(benchBuild(1000, 655373, 2, quick ? 3 : 7));
  emit(benchDisruption(100, 65537, quick ? 3 : 9));
  emit(benchDisruption(100, 655373, quick ? 3 : 5));
  emit(benchDisruption(1000, 65537, 3));
  emit(benchDisruption(1000, 655373, 3));
  for (const r of benchLookups(quick)) emit(r);
  gcObserver.disconnect();
  if (args.json) return;

  const columns = [
    'name',
    'n',
    'm',
    'buildMs',
    'maxOverMean',
    'disruptionOverIdeal',
    'lookupNs',
    'allocBytesPerOp',
  ];
  const cells = rows.map((r) => columns.map((c) => (r[c] === undefined ? '' : String(r[c]))));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i]!.length)));
  const line = (values: string[]): string =>
    values.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  console.log(`balance — Node ${process.version}, medians after warm-up${quick ? ' (quick)' : ''}`);
  console.log(line(columns));
  for (const row of cells) console.log(line(row));
  await Promise.resolve();
}
