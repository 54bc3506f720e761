/**
 * `node bench/_ws-idle.ts [--conns 5000] [--settle 25] [--seconds 30] [--runs 3]
 *   [--ping 10s|off] [--max-age 30m|off] [--entry label=path/to/cli/main.js …] [--profile DIR]`
 *
 * What holdfast costs while nothing happens: N proxied WebSockets are opened
 * (clients, backend and gateway each in its own process, as in
 * bench/websocket.ts), the gateway is left alone for `--settle` seconds (the
 * collections and the memory reducer's run that follow a burst of handshakes),
 * then its CPU is read from /proc over `--seconds`, in % of one core. With
 * several `--entry` builds the runs are interleaved (a, b, a, b, …) and
 * medians printed, for A/B comparisons. Hold the bench lock while it runs.
 *
 * `--profile DIR` (one entry, one run) also writes a CPU profile of the
 * window only and counts the timers that fired in it, by where they were set.
 *
 * `--relay` measures the other side instead, for changes on the relay's
 * path: the gateway's CPU per relayed message (µs) while 50 clients echo
 * 1 KiB messages, 16 in flight each, over `--seconds` (no idle connections).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../test/helpers/net.ts';
import { ask, startWsLoad } from './lib/ws-load.ts';
import { cpuMs, holdfastEntry, LAUNCHER_FLAGS, median, waitForPort } from './lib/peers.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const { values } = parseArgs({
  options: {
    conns: { type: 'string', default: '5000' },
    settle: { type: 'string', default: '25' },
    seconds: { type: 'string', default: '30' },
    runs: { type: 'string', default: '3' },
    ping: { type: 'string', default: '10s' },
    'max-age': { type: 'string', default: '30m' },
    entry: { type: 'string', multiple: true },
    profile: { type: 'string' },
    relay: { type: 'boolean', default: false },
  },
});
const conns = Number(values.conns);
const entries = (values.entry ?? [`this=${holdfastEntry()}`]).map((e) => {
  const at = e.indexOf('=');
  return { label: e.slice(0, at), path: e.slice(at + 1) };
});

/** Preload for --profile: SIGUSR2 starts a CPU profile and timer counting, the next one writes both. */
const PROFILER = `
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';
const dir = process.env.WS_IDLE_PROFILE_DIR;
const counts = new Map();
let on = false;
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = function (fn, ms, ...args) {
  const where = (new Error().stack ?? '').split('\\n').slice(2, 4).map((l) => l.trim()).join(' <- ');
  return realSetTimeout(function () {
    if (on) counts.set(where, (counts.get(where) ?? 0) + 1);
    return fn.apply(this, arguments);
  }, ms, ...args);
};
const session = new Session();
session.connect();
process.on('SIGUSR2', () => {
  if (!on) {
    on = true;
    session.post('Profiler.enable', () => session.post('Profiler.start'));
    return;
  }
  on = false;
  session.post('Profiler.stop', (err, { profile }) => {
    writeFileSync(dir + '/idle.cpuprofile', JSON.stringify(profile));
    writeFileSync(dir + '/timers.json', JSON.stringify([...counts].sort((a, b) => b[1] - a[1]), null, 1));
  });
});
`;

const dir = mkdtempSync(join(tmpdir(), 'holdfast-ws-idle-'));
const load = await startWsLoad();
const { backendPort: backend, clients } = load;

const samples = new Map<string, number[]>(entries.map((e) => [e.label, []]));
try {
  for (let run = 0; run < Number(values.runs); run++) {
    for (const entry of entries) {
      const port = await freePort();
      const file = join(dir, `${entry.label}.yaml`);
      writeFileSync(
        file,
        [
          'log: { level: warn }',
          'services:',
          '  - name: ws',
          '    protocol: http',
          `    listen: 127.0.0.1:${port}`,
          `    backends: { static: [127.0.0.1:${backend}] }`,
          `    websocket: { ping: ${values.ping === 'off' ? 'off' : `{ interval: ${values.ping}, timeout: 5s }`} }`,
          `    maxConnectionAge: ${values['max-age']}`,
        ].join('\n'),
      );
      const flags = LAUNCHER_FLAGS.split(' ');
      if (values.profile !== undefined) {
        writeFileSync(join(dir, 'profiler.mjs'), PROFILER);
        flags.push('--import', join(dir, 'profiler.mjs'));
      }
      const gw = spawn(process.execPath, [...flags, entry.path, 'serve', '--config', file, '--json'], {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: { ...process.env, MALLOC_ARENA_MAX: '1', WS_IDLE_PROFILE_DIR: values.profile ?? '' },
      });
      try {
        await waitForPort(port);
        if (values.relay) {
          const c0 = cpuMs(gw.pid!);
          const t = await ask<{ msgsPerSec: number }>(clients, {
            cmd: 'throughput',
            port,
            conns: 50,
            seconds: Number(values.seconds),
            size: 1024,
            window: 16,
          });
          // CPU over the warm-up and the window; messages over the window, scaled to the same span.
          const used = cpuMs(gw.pid!) - c0;
          const us = (used * 1000) / (t.msgsPerSec * (Number(values.seconds) + 0.5));
          samples.get(entry.label)!.push(us);
          console.log(
            `run ${run + 1} ${entry.label}: ${us.toFixed(2)} µs per message, ${Math.round(t.msgsPerSec)} msgs/s`,
          );
          continue;
        }
        await ask(clients, { cmd: 'open', port, n: conns });
        await sleep(Number(values.settle) * 1000);
        if (values.profile !== undefined) gw.kill('SIGUSR2');
        const c0 = cpuMs(gw.pid!);
        const w0 = performance.now();
        await sleep(Number(values.seconds) * 1000);
        const pct = ((cpuMs(gw.pid!) - c0) / (performance.now() - w0)) * 100;
        if (values.profile !== undefined) {
          gw.kill('SIGUSR2');
          await sleep(2000);
        }
        samples.get(entry.label)!.push(pct);
        console.log(`run ${run + 1} ${entry.label}: ${pct.toFixed(2)} % of a core`);
        await ask(clients, { cmd: 'close' });
      } finally {
        gw.kill('SIGKILL');
        if (gw.exitCode === null && gw.signalCode === null) await once(gw, 'exit');
      }
      await sleep(500);
    }
  }
} finally {
  load.stop();
}
for (const [label, xs] of samples) {
  if (values.relay) {
    console.log(
      `${label}: median ${median(xs).toFixed(2)} µs of gateway CPU per relayed message (${xs.map((x) => x.toFixed(2)).join(', ')})`,
    );
    continue;
  }
  console.log(
    `${label}: median ${median(xs).toFixed(2)} % of a core (${xs.map((x) => x.toFixed(2)).join(', ')}), ${conns} idle WebSockets, ping ${values.ping}, maxConnectionAge ${values['max-age']}`,
  );
}
