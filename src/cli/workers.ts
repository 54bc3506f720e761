/**
 * Several proxy processes behind the same ports (`workers:` in the config).
 *
 * One process holds about 9,900 proxied TCP connections under a 20,000
 * file-descriptor limit, and uses one core. With `workers: N` the primary
 * process forks N workers; each runs a full Gateway and binds every listener
 * with SO_REUSEPORT, so the kernel spreads new connections over them. Each
 * worker balances its own connections (least-connections per worker keeps
 * the total within a few connections per backend). The primary holds no
 * proxied connection: it serves the admin listener (metrics summed over the
 * workers), turns signals into messages, and restarts a worker that dies.
 */
import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry } from 'prom-client';
import { AdminServer } from '../admin/server.ts';
import { formatHostPort } from '../config/address.ts';
import { loadConfigFile } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { HoldfastError } from '../errors.ts';
import { Gateway } from '../gateway.ts';
import type { Logger } from '../log.ts';

type ToWorker =
  | { type: 'holdfast:reload'; config: Config }
  | { type: 'holdfast:shutdown' }
  | { type: 'holdfast:status'; id: number };

type FromWorker =
  | { type: 'holdfast:ready' }
  | { type: 'holdfast:failed'; error: string }
  | { type: 'holdfast:reloaded'; error?: string }
  | { type: 'holdfast:status'; id: number; status: unknown };

function isHoldfastMessage(m: unknown): m is FromWorker | ToWorker {
  return (
    typeof m === 'object' && m !== null && String((m as { type?: unknown }).type).startsWith('holdfast:')
  );
}

/** How many worker processes `config` asks for. */
export function workerCount(config: Config): number {
  return config.workers === 'auto' ? availableParallelism() : config.workers;
}

const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;

/** The primary: fork, supervise, relay signals, serve admin. Resolves when all workers are up. */
export async function runPrimary(opts: {
  configFile: string | undefined;
  config: Config;
  log: Logger;
  onExit: (code: number) => void;
}): Promise<void> {
  const { configFile, log } = opts;
  let config = opts.config;
  const count = workerCount(config);
  let stopping = false;
  let restartDelay = RESTART_MIN_MS;
  const workers = new Set<Worker>();

  const fork = (): Promise<Worker> =>
    new Promise((resolve, reject) => {
      const worker = cluster.fork({ HOLDFAST_WORKER: '1' });
      workers.add(worker);
      const onMessage = (m: unknown): void => {
        if (!isHoldfastMessage(m)) return;
        if (m.type === 'holdfast:ready') {
          worker.off('message', onMessage);
          resolve(worker);
        } else if (m.type === 'holdfast:failed') {
          worker.off('message', onMessage);
          reject(new HoldfastError('HOLDFAST_ERR_WORKER', m.error));
        }
      };
      worker.on('message', onMessage);
      worker.once('exit', (code, signal) => {
        workers.delete(worker);
        worker.off('message', onMessage);
        reject(
          new HoldfastError('HOLDFAST_ERR_WORKER', `worker exited during start (code ${code}, ${signal})`),
        );
        if (stopping) {
          if (workers.size === 0) void finish();
          return;
        }
        log.error(
          { worker: worker.id, code, signal, restartInMs: restartDelay },
          'worker died; restarting it',
        );
        const delay = restartDelay;
        restartDelay = Math.min(RESTART_MAX_MS, restartDelay * 2);
        setTimeout(() => {
          if (stopping) return;
          fork().then(
            () => (restartDelay = RESTART_MIN_MS),
            (err: unknown) => log.error({ err: String(err) }, 'restarted worker failed to start'),
          );
        }, delay).unref();
      });
    });

  let admin: AdminServer | undefined;
  const aggregate = new AggregatorRegistry();
  const metrics = { contentType: aggregate.contentType, metrics: () => aggregate.clusterMetrics() };
  let statusSeq = 0;
  const status = async (): Promise<unknown> => {
    const id = ++statusSeq;
    const answers = await Promise.all(
      [...workers].map(
        (w) =>
          new Promise<unknown>((resolve) => {
            const timer = setTimeout(() => resolve({ worker: w.id, error: 'no answer within 2 s' }), 2_000);
            const onMessage = (m: unknown): void => {
              if (isHoldfastMessage(m) && m.type === 'holdfast:status' && 'status' in m && m.id === id) {
                clearTimeout(timer);
                w.off('message', onMessage);
                resolve({ worker: w.id, pid: w.process.pid, ...(m.status as object) });
              }
            };
            w.on('message', onMessage);
            w.send({ type: 'holdfast:status', id } satisfies ToWorker);
          }),
      ),
    );
    return { draining: stopping, workers: answers };
  };
  const startAdmin = async (): Promise<void> => {
    if (config.admin === undefined) return;
    admin = new AdminServer(config.admin.listen, metrics, { draining: () => stopping, status });
    await admin.listen();
  };

  const finish = async (): Promise<void> => {
    await admin?.close();
    log.info('all workers stopped; exiting');
    opts.onExit(0);
  };

  const stop = (signal: string): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: stopping workers now');
      for (const w of workers) w.process.kill('SIGKILL');
      opts.onExit(1);
      return;
    }
    stopping = true;
    log.info({ signal, workers: workers.size }, 'draining workers before exit');
    if (workers.size === 0) void finish();
    for (const w of workers) w.send({ type: 'holdfast:shutdown' } satisfies ToWorker);
  };

  const reload = async (): Promise<void> => {
    if (configFile === undefined) {
      log.warn('SIGHUP: the embedded demo has no config file to re-read');
      return;
    }
    let next: Config;
    try {
      next = await loadConfigFile(configFile);
    } catch (err) {
      const code = err instanceof HoldfastError ? err.code : undefined;
      log.error(
        { err: err instanceof Error ? err.message : String(err), code },
        'reload rejected; the running config stays',
      );
      return;
    }
    if (workerCount(next) !== count) log.warn({ workers: count }, '`workers` changes take effect on restart');
    const results = await Promise.all(
      [...workers].map(
        (w) =>
          new Promise<string | undefined>((resolve) => {
            const onMessage = (m: unknown): void => {
              if (isHoldfastMessage(m) && m.type === 'holdfast:reloaded') {
                w.off('message', onMessage);
                resolve(m.error);
              }
            };
            w.on('message', onMessage);
            w.send({ type: 'holdfast:reload', config: next } satisfies ToWorker);
          }),
      ),
    );
    const failed = results.find((e) => e !== undefined);
    if (failed !== undefined) {
      log.error({ err: failed }, 'reload rejected by a worker; the running config stays there');
      return;
    }
    const adminChanged =
      (config.admin === undefined) !== (next.admin === undefined) ||
      (config.admin !== undefined &&
        next.admin !== undefined &&
        formatHostPort(config.admin.listen) !== formatHostPort(next.admin.listen));
    config = next;
    if (adminChanged) {
      await admin?.close();
      admin = undefined;
      await startAdmin().catch((err: unknown) => log.error({ err: String(err) }, 'admin listener failed'));
    }
    log.info({ workers: workers.size }, 'config reloaded');
  };

  process.on('SIGHUP', () => void reload());
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  try {
    await Promise.all(Array.from({ length: count }, () => fork()));
    await startAdmin();
  } catch (err) {
    stopping = true;
    for (const w of workers) w.process.kill('SIGKILL');
    throw err;
  }
  log.info({ workers: count, pid: process.pid }, 'holdfast started');
}

/** A worker: a Gateway on shared ports, driven by the primary's messages. */
export async function runWorker(opts: { config: Config; log: Logger }): Promise<void> {
  const log = opts.log.child({ worker: cluster.worker?.id });
  let gateway: Gateway;
  try {
    gateway = await Gateway.start(opts.config, { log, worker: true });
  } catch (err) {
    process.send?.({ type: 'holdfast:failed', error: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  }
  // Constructing one installs prom-client's answer to the primary's metrics requests.
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([gateway.metrics]);
  let stopping = false;
  const shutdown = (): void => {
    if (stopping) return;
    stopping = true;
    void gateway.shutdown().then(() => process.exit(0));
  };
  // The primary turns signals into messages; a terminal's Ctrl-C reaches the
  // whole process group, so workers leave SIGINT and SIGHUP to the primary.
  process.on('SIGINT', () => {});
  process.on('SIGHUP', () => {});
  process.on('SIGTERM', shutdown);
  process.on('disconnect', shutdown);
  process.on('message', (m: unknown) => {
    if (!isHoldfastMessage(m)) return;
    if (m.type === 'holdfast:shutdown') shutdown();
    else if (m.type === 'holdfast:status')
      process.send?.({ type: 'holdfast:status', id: m.id, status: gateway.status() });
    else if (m.type === 'holdfast:reload') {
      gateway.reload(m.config).then(
        () => process.send?.({ type: 'holdfast:reloaded' }),
        (err: unknown) =>
          process.send?.({
            type: 'holdfast:reloaded',
            error: err instanceof Error ? err.message : String(err),
          }),
      );
    }
  });
  process.send?.({ type: 'holdfast:ready' });
}

export const isWorkerProcess = (): boolean => cluster.isWorker && process.env.HOLDFAST_WORKER === '1';
