#!/usr/bin/env -S MALLOC_ARENA_MAX=1 node --max-semi-space-size=8 --no-allocation-site-pretenuring --expose-gc
/**
 * The `holdfast` command: serve, check-config, --help, --version.
 *
 * The launcher runs Node with an 8 MiB young-generation semi-space (half of
 * V8's default): large enough that a request's objects die young under load
 * (with 2 MiB, half of them were promoted and the old generation was
 * collected every second, which made the slowest 1 % of requests 3–4 times
 * slower), small enough for a gateway that mostly holds idle connections.
 * `MALLOC_ARENA_MAX=1` keeps glibc's allocator to one arena: V8's helper
 * threads otherwise get arenas of their own, whose freed pages stay resident
 * (about 1 KB per idle WebSocket after a burst of 5,000). `--expose-gc`
 * gives the memory reducer (src/memory-reducer.ts) its `gc`. `npm start`,
 * the container image and the benchmarks use the same settings; see
 * docs/operations.md and bench/RESULTS.md.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { Server } from 'node:net';
import { loadConfigFile } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { DEMO_BACKEND_PORTS, demoConfig, demoHelp, startDemoBackends } from '../demo.ts';
import { HoldfastError } from '../errors.ts';
import { Gateway } from '../gateway.ts';
import { createLogger } from '../log.ts';
import { isWorkerProcess, runPrimary, runWorker, workerCount } from './workers.ts';

const USAGE = `holdfast — a load balancer for long-lived connections

Usage:
  holdfast serve [--config FILE] [--pretty | --json]
      Run the gateway. Without --config, runs the embedded demo
      (a gateway on 127.0.0.1:7000 over three built-in backends).
      SIGHUP re-reads the config; SIGTERM drains and exits.
  holdfast check-config FILE
      Validate a config file and exit: 0 if it is good, 1 with the error if not.
  holdfast --help | --version

Options:
  -c, --config FILE   YAML config file (see docs/config.md)
      --pretty        human-readable logs (default when stdout is a terminal)
      --json          JSON-lines logs (default otherwise)
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

function fail(err: unknown): never {
  const message =
    err instanceof HoldfastError
      ? `${err.message} [${err.code}]`
      : err instanceof Error
        ? err.stack
        : String(err);
  process.stderr.write(`holdfast: ${message}\n`);
  process.exit(1);
}

async function serve(configFile: string | undefined, pretty: boolean): Promise<void> {
  let config: Config;
  let demoBackends: Server[] = [];
  if (configFile === undefined) {
    config = demoConfig();
  } else {
    config = await loadConfigFile(configFile).catch(fail);
  }
  const log = createLogger({ level: config.log.level, pretty });
  if (isWorkerProcess()) {
    await runWorker({ config, log });
    return;
  }
  if (configFile === undefined) {
    demoBackends = await startDemoBackends(DEMO_BACKEND_PORTS).catch(fail);
  }
  if (workerCount(config) > 1) {
    await runPrimary({
      configFile,
      config,
      log,
      onExit: (code) => {
        for (const s of demoBackends) s.close();
        process.exit(code);
      },
    }).catch(fail);
    if (configFile === undefined) process.stderr.write(demoHelp());
    return;
  }
  const gateway = await Gateway.start(config, { log }).catch(fail);
  if (configFile === undefined) process.stderr.write(demoHelp());

  process.on('SIGHUP', () => {
    if (configFile === undefined) {
      log.warn('SIGHUP: the embedded demo has no config file to re-read');
      return;
    }
    log.info({ file: configFile }, 'SIGHUP: reloading config');
    loadConfigFile(configFile)
      .then((next) => gateway.reload(next))
      .catch((err: unknown) => {
        const msg = err instanceof Error ? err.message : String(err);
        const code = err instanceof HoldfastError ? err.code : undefined;
        log.error({ err: msg, code }, 'reload rejected; the running config stays');
      });
  });
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'draining before exit');
    gateway
      .shutdown()
      .then(() => {
        for (const s of demoBackends) s.close();
        process.exit(0);
      })
      .catch(fail);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      pretty: { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
    },
    allowPositionals: true,
  });
  if (values.version === true) {
    process.stdout.write(`holdfast ${version()}\n`);
    return;
  }
  const [command, ...rest] = positionals;
  if (values.help === true || command === undefined || command === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  switch (command) {
    case 'serve': {
      const pretty = values.pretty === true || (values.json !== true && process.stdout.isTTY);
      await serve(values.config ?? rest[0], pretty);
      return;
    }
    case 'check-config': {
      const file = values.config ?? rest[0];
      if (file === undefined) fail(new HoldfastError('HOLDFAST_ERR_USAGE', 'check-config needs a FILE'));
      const config = await loadConfigFile(file).catch(fail);
      const listeners = config.services.reduce((n, s) => n + s.listen.length, 0);
      process.stdout.write(`${file}: ok (${config.services.length} service(s), ${listeners} listener(s))\n`);
      return;
    }
    default:
      fail(new HoldfastError('HOLDFAST_ERR_USAGE', `unknown command "${command}"; see holdfast --help`));
  }
}

main(process.argv.slice(2)).catch(fail);
