/**
 * Off-thread Maglev builds. This file is the one exception to `src/balance/`
 * being pure and synchronous: it starts a worker thread (the same module, run
 * as the worker's entry), builds the table there, and transfers the typed
 * arrays back without copying. At M = 655 373 a build takes tens of ms, which
 * must not stall the event loop that is proxying connections.
 *
 * {@link setTargetsOffThread} stages the update on the balancer, builds off
 * thread, and commits: picks use the old table until the new one is swapped in
 * as one assignment, and a build overtaken by a newer `setTargets`/stage is
 * discarded.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import {
  buildMaglevTable,
  canonicalBackends,
  checkTableSize,
  MAGLEV_FORMAT,
  type MaglevBackend,
  type MaglevBalancer,
  type MaglevTable,
} from './maglev.ts';
import type { Target } from './types.ts';

interface BuildRequest {
  holdfastMaglevBuild: 1;
  backends: MaglevBackend[];
  m: number;
}

interface BuildReply {
  version: number;
  m: number;
  keys: string[];
  weights: Float64Array<ArrayBuffer>;
  entries: Int32Array<ArrayBuffer>;
  counts: Uint32Array<ArrayBuffer>;
}

function isBuildRequest(data: unknown): data is BuildRequest {
  return (
    typeof data === 'object' &&
    data !== null &&
    (data as { holdfastMaglevBuild?: unknown }).holdfastMaglevBuild === 1
  );
}

// Worker side: build, transfer, done.
if (!isMainThread && parentPort !== null && isBuildRequest(workerData)) {
  const { backends, m } = workerData;
  const t = buildMaglevTable(backends, m);
  const reply: BuildReply = {
    version: t.version,
    m: t.m,
    keys: [...t.keys],
    weights: t.weights,
    entries: t.entries,
    counts: t.counts,
  };
  parentPort.postMessage(reply, [t.entries.buffer, t.counts.buffer, t.weights.buffer]);
}

/**
 * Build a table in a worker thread. The input is validated here first (so bad
 * input throws the same HoldfastErrors as {@link buildMaglevTable}), and the
 * result is identical to a synchronous build.
 */
export async function buildMaglevTableOffThread(
  backends: readonly MaglevBackend[],
  m: number,
): Promise<MaglevTable> {
  checkTableSize(m);
  const request: BuildRequest = { holdfastMaglevBuild: 1, backends: canonicalBackends(backends), m };
  const worker = new Worker(new URL(import.meta.url), { workerData: request });
  try {
    const reply = await new Promise<BuildReply>((resolve, reject) => {
      worker.once('message', (message: BuildReply) => resolve(message));
      worker.once('error', reject);
      worker.once('exit', (code) =>
        reject(new Error(`maglev build worker exited with code ${code} before replying`)),
      );
    });
    if (reply.version !== MAGLEV_FORMAT.version || reply.m !== m)
      throw new Error('maglev build worker: mismatched table');
    return reply;
  } finally {
    void worker.terminate();
  }
}

/**
 * Update a Maglev balancer's targets with the table built off thread.
 * Resolves true when the new table was swapped in, false when a newer update
 * superseded this one (the newer one wins; nothing is lost).
 */
export async function setTargetsOffThread<T extends Target>(
  balancer: MaglevBalancer<T>,
  targets: readonly T[],
): Promise<boolean> {
  const staged = balancer.stage(targets);
  const table = await buildMaglevTableOffThread(staged.backends, staged.m);
  return balancer.commit(staged, table);
}
