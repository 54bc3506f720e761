/**
 * A backend whose SYNs vanish (a firewall drops them, a node is gone) is
 * only noticed by the connect timeout. nftables drops the SYNs here, on
 * loopback, in a table of our own that the test removes again.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil, startEchoBackend } from '../helpers/net.ts';
import { privilegedSkipReason, run } from '../helpers/privileged.ts';

const skip = privilegedSkipReason(['nft']);
const table = `holdfast_test_${process.pid}`;
const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe('connect timeout', { skip }, () => {
  test('a backend that silently drops SYNs is given up after the connect timeout and the next backend serves', async () => {
    const blackhole = await freePort();
    const good = await startEchoBackend({ greet: true });
    cleanups.push(() => good.close());
    run(
      'nft',
      ['-f', '-'],
      `table inet ${table} {\n chain out {\n  type filter hook output priority 0;\n  oifname "lo" tcp dport ${blackhole} tcp flags syn drop\n }\n}\n`,
    );
    cleanups.push(() => void run('nft', ['delete', 'table', 'inet', table]));
    const port = await freePort();
    const { gateway } = await startGateway(`
services:
  - name: timeouts
    listen: 127.0.0.1:${port}
    balance: round-robin
    timeouts: { connect: 300ms }
    backends: { static: [127.0.0.1:${blackhole}, 127.0.0.1:${good.port}] }
`);
    cleanups.push(() => gateway.shutdown());
    const started = Date.now();
    const sockets = await Promise.all([dial(port), dial(port)]);
    for (const s of sockets) cleanups.push(() => void s.destroy());
    const greetings = await Promise.all(sockets.map((s) => readUntil(s, '\n', 5_000)));
    assert.deepEqual(
      greetings.map((g) => Number(g.trim())),
      [good.port, good.port],
    );
    assert.ok(Date.now() - started < 3_000);
    assert.match(
      await gateway.metrics.metrics(),
      new RegExp(
        `holdfast_backend_connect_failures_total\\{service="timeouts",backend="127.0.0.1:${blackhole}"\\} 1`,
      ),
    );
  });
});
