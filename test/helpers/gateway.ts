/** Run holdfast in-process or as a real child process, for integration tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseConfig } from '../../src/config/load.ts';
import { Gateway, type GatewayOptions } from '../../src/gateway.ts';
import { createLogger, type Logger } from '../../src/log.ts';

export const ROOT = new URL('../../', import.meta.url).pathname;
/** The Node that runs the tests (24 from node_modules under npm test). */
export const NODE = process.execPath;

/** A logger that keeps JSON records in memory, for asserting on log lines. */
export function memoryLogger(): { log: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n'))
        if (line !== '') records.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const log = createLogger({ level: 'debug', pretty: false, destination });
  return { log, records };
}

/** Start a gateway in this process from YAML text (on `clock` when given), logging to memory. */
export async function startGateway(
  yaml: string,
  options: Omit<GatewayOptions, 'log'> = {},
): Promise<{ gateway: Gateway; records: Record<string, unknown>[] }> {
  const { log, records } = memoryLogger();
  const gateway = await Gateway.start(parseConfig(yaml, 'test.yaml'), { ...options, log });
  return { gateway, records };
}

/** Write `yaml` to a fresh temp file and return its path. */
export function writeConfig(yaml: string, name = 'holdfast.yaml'): string {
  const dir = mkdtempSync(join(tmpdir(), 'holdfast-test-'));
  const file = join(dir, name);
  writeFileSync(file, yaml);
  return file;
}

export interface HoldfastProcess {
  readonly child: ChildProcess;
  /** Parsed JSON log lines so far. */
  readonly logs: Record<string, unknown>[];
  readonly stderr: () => string;
  /** Resolve when a log line with this `msg` appears (counting from `after` lines). */
  waitForLog(msg: string, timeoutMs?: number, after?: number): Promise<Record<string, unknown>>;
  kill(signal: NodeJS.Signals): void;
  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Run `holdfast ARGS…` as a real process (the CLI from source, on this Node). */
export function runHoldfast(args: string[]): HoldfastProcess {
  const child = spawn(NODE, [join(ROOT, 'src/cli/main.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  let partial = '';
  const waiters: { msg: string; after: number; resolve: (r: Record<string, unknown>) => void }[] = [];
  const check = (): void => {
    for (const w of [...waiters]) {
      const hit = logs.slice(w.after).find((r) => r.msg === w.msg);
      if (hit !== undefined) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(hit);
      }
    }
  };
  child.stdout.on('data', (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ msg: line });
      }
    }
    check();
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  return {
    child,
    logs,
    stderr: () => stderr,
    waitForLog(msg, timeoutMs = 15_000, after = 0) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(
                `no log "${msg}" within ${timeoutMs} ms; stderr: ${stderr}; logs: ${JSON.stringify(logs)}`,
              ),
            ),
          timeoutMs,
        );
        waiters.push({
          msg,
          after,
          resolve: (r) => {
            clearTimeout(timer);
            resolve(r);
          },
        });
        check();
      });
    },
    kill: (signal) => void child.kill(signal),
    exited: () => exit,
  };
}
