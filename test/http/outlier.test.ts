import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { startGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/net.ts';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function backend(status: number): Promise<number> {
  const server: Server = createServer((_req, res) => res.writeHead(status).end(String(status)));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => server.closeAllConnections());
  cleanups.push(() => void server.close());
  return (server.address() as AddressInfo).port;
}

test('a backend answering 5xx in a row is ejected by outlier detection and requests go to the healthy one', async () => {
  const bad = await backend(503);
  const good = await backend(200);
  const port = await freePort();
  const { gateway } = await startGateway(`
services:
  - name: outliers
    protocol: http
    listen: 127.0.0.1:${port}
    balance: round-robin
    retries: 0
    outlierDetection: { consecutive5xx: 3, baseEjectionTime: 30s, maxEjectionPercent: 50 }
    backends: { static: [127.0.0.1:${bad}, 127.0.0.1:${good}] }
`);
  cleanups.push(() => gateway.shutdown());
  const statuses: number[] = [];
  for (let i = 0; i < 20; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/`);
    await res.text();
    statuses.push(res.status);
  }
  assert.equal(statuses.filter((s) => s === 503).length, 3, `statuses: ${statuses.join(',')}`);
  assert.equal(gateway.services.get('outliers')!.cluster.backends.get(`127.0.0.1:${bad}`)!.state, 'ejected');
  assert.match(
    await gateway.metrics.metrics(),
    /holdfast_outlier_ejections_total\{service="outliers",backend="127\.0\.0\.1:\d+"\} 1/,
  );
});
