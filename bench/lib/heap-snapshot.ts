/**
 * Heap snapshots and CPU profiles of a running holdfast, for the bench
 * helpers that ask what one idle connection retains or costs (_ws-heap.ts,
 * _h2-heap.ts): take a snapshot through SIGUSR2 (`--heapsnapshot-signal`) and
 * group its nodes by type and constructor; print where a `--cpu-prof`
 * profile's samples of a time window went.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

/** The nodes of the snapshot in `file`, grouped as `type:name` (strings and code each as one group). */
export function groups(file: string): Map<string, { count: number; size: number }> {
  const s = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  const f = s.snapshot.meta.node_fields;
  const types = s.snapshot.meta.node_types[0];
  const n = f.length;
  const iType = f.indexOf('type');
  const iName = f.indexOf('name');
  const iSize = f.indexOf('self_size');
  const out = new Map<string, { count: number; size: number }>();
  for (let i = 0; i < s.nodes.length; i += n) {
    const type = types[s.nodes[i + iType]!]!;
    let name = s.strings[s.nodes[i + iName]!]!;
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string') name = '(string)';
    else if (type === 'code') name = '(code)';
    else if (name.length > 40) name = `${name.slice(0, 40)}…`;
    const key = `${type}:${name}`;
    const g = out.get(key) ?? { count: 0, size: 0 };
    g.count++;
    g.size += s.nodes[i + iSize]!;
    out.set(key, g);
  }
  return out;
}

/**
 * Ask `pid` for a heap snapshot (SIGUSR2) and wait for it in `dir`, where
 * `have` snapshots were already: returns its path once the file stops growing.
 */
export async function snap(pid: number, dir: string, have: number): Promise<string> {
  process.kill(pid, 'SIGUSR2');
  for (;;) {
    await sleep(500);
    const files = readdirSync(dir).filter((f) => f.endsWith('.heapsnapshot'));
    if (files.length > have) {
      const file = join(dir, files.sort()[files.length - 1]!);
      let size = -1;
      for (;;) {
        const now = readFileSync(file).length;
        if (now === size) return file;
        size = now;
        await sleep(1000);
      }
    }
  }
}

/**
 * Print the functions a `--cpu-prof` profile in `dir` spent its samples in,
 * self time, over the `seconds` that started at `mark` (Date.now()) — the
 * profile's clock has its own origin, so the window is counted back from its
 * last sample, written at about the time of this call.
 */
export function printProfileWindow(dir: string, mark: number, seconds: number): void {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error('no profile');
  interface Node {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
  }
  const prof = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
    nodes: Node[];
    samples: number[];
    timeDeltas: number[];
    startTime: number;
  };
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let t = prof.startTime;
  const times = prof.timeDeltas.map((d) => (t += d));
  const end = times[times.length - 1]!;
  const from = end - (Date.now() - mark) * 1000;
  const to = from + seconds * 1e6;
  let total = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    if (times[i]! < from || times[i]! > to) continue;
    const f = byId.get(prof.samples[i]!)!.callFrame;
    if (f.functionName === '(idle)') continue;
    const key = `${f.functionName || '(anon)'} ${f.url.replace(/.*\//, '')}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + (prof.timeDeltas[i] ?? 0));
    total += prof.timeDeltas[i] ?? 0;
  }
  console.log(`sampled busy ${(total / 1000).toFixed(0)} ms`);
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 30))
    console.log(`${(v / 1000).toFixed(1).padStart(8)} ms  ${k}`);
}
