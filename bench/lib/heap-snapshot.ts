/**
 * Heap snapshots of a running holdfast, for the bench helpers that ask what
 * one idle connection retains (_ws-heap.ts, _h2-heap.ts): take one through
 * SIGUSR2 (`--heapsnapshot-signal`) and group a snapshot's nodes by type and
 * constructor.
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
