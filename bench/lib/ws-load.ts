/**
 * The two helper processes of the WebSocket benches: the echo backend
 * (bench/_ws-backend.ts) and the client fleet (bench/_ws-clients.ts), each in
 * its own process so that neither shares the gateway's CPU or its file
 * descriptor limit.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { ROOT } from './peers.ts';

export interface WsLoad {
  /** The echo backend's port (127.0.0.1). */
  backendPort: number;
  /** Takes `ask` commands: open, rates, close (see bench/_ws-clients.ts). */
  clients: ChildProcess;
  /** Kill both processes. */
  stop(): void;
}

/** Start the echo backend and the client fleet. */
export async function startWsLoad(): Promise<WsLoad> {
  const backend = spawn(process.execPath, [join(ROOT, 'bench/_ws-backend.ts')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [line] = (await once(backend.stdout, 'data')) as [Buffer];
  const clients = fork(join(ROOT, 'bench/_ws-clients.ts'), {
    execPath: process.execPath,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  return {
    backendPort: Number(line.toString().trim()),
    clients,
    stop: () => {
      clients.kill('SIGKILL');
      backend.kill('SIGKILL');
    },
  };
}

/** Send the client fleet a command and wait for its answer (an `error` field rejects). */
export function ask<T>(child: ChildProcess, msg: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    child.once('message', (m: T & { error?: string }) =>
      m.error !== undefined ? reject(new Error(m.error)) : resolve(m),
    );
    child.send(msg as never);
  });
}
