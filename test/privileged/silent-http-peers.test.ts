/**
 * On a `protocol: http` service, TCP keepalive (`tcpKeepAlive`) finds peers
 * that vanish without a FIN on idle connections: an HTTP client whose host
 * is gone gives its place under `limits.maxConnections` back in seconds, and
 * an idle pooled connection to a backend host that went silent is closed
 * rather than kept for the next request.
 *
 * The client and the backend run in a network namespace of the test's own,
 * reached over a veth pair; nftables inside that namespace then drops every
 * packet.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { startGateway } from '../helpers/gateway.ts';
import { waitFor } from '../helpers/net.ts';
import {
  cleanupsAfterAll,
  dropAll,
  nodeInNamespace,
  privilegedSkipReason,
  vethNamespace,
} from '../helpers/privileged.ts';

const skip = privilegedSkipReason(['nft', 'ip']);
const id = process.pid % 10_000;
const ns = `hf-shttp-${id}`;
const hostSide = `hfh${id}a`;
const nsSide = `hfh${id}b`;
// Addresses of this test's own two hosts, inside its own veth pair.
const hostIp = '10.213.9.1';
const peerIp = '10.213.9.2';
const cleanups = cleanupsAfterAll();

/** A line of `node -e` output from a process in the namespace. */
async function line(child: ChildProcess): Promise<string> {
  const [data] = (await once(child.stdout!, 'data')) as [Buffer];
  return data.toString().trim();
}

describe('silent HTTP peers', { skip }, () => {
  test('TCP keepalive finds an HTTP client and a pooled backend connection whose host went silent', async () => {
    vethNamespace({ ns, hostSide, nsSide, hostIp, nsIp: peerIp }, cleanups);

    const backendPort = 7800 + (id % 500);
    const backend = nodeInNamespace(
      ns,
      `require('node:http').createServer({ keepAliveTimeout: 600000 }, (req, res) => res.end('ok'))
         .listen(${backendPort}, '${peerIp}', () => console.log('ready'));`,
      cleanups,
    );
    assert.equal(await line(backend), 'ready');

    const port = 8300 + (id % 500);
    const { gateway } = await startGateway(`
services:
  - name: silent
    protocol: http
    listen: ${hostIp}:${port}
    tcpKeepAlive: 1s
    limits: { maxConnections: 1 }
    httpTimeouts: { clientIdle: 10m }
    backends: { static: [${peerIp}:${backendPort}] }
`);
    cleanups.push(() => gateway.shutdown());

    // A keep-alive client in the namespace: one request, then it stays connected, idle.
    const client = nodeInNamespace(
      ns,
      `const http = require('node:http');
       const agent = new http.Agent({ keepAlive: true });
       http.get({ host: '${hostIp}', port: ${port}, agent }, (res) => {
         res.resume();
         res.on('end', () => console.log(res.statusCode));
       });
       setInterval(() => {}, 1000);`,
      cleanups,
    );
    assert.equal(await line(client), '200');
    assert.equal(gateway.services.get('silent')!.handler.live, 1);
    const pooled = (): number =>
      spawnSync('ss', ['-tnH', 'state', 'established', `( dst = ${peerIp} and dport = :${backendPort} )`], {
        encoding: 'utf8',
      })
        .stdout.split('\n')
        .filter((l) => l.trim() !== '').length;
    assert.equal(pooled(), 1, 'one pooled connection to the backend');

    // Client and backend host go silent: no FIN, no RST, nothing, either way
    // (the client's own keepalive would otherwise end its connection for it).
    // Inside the test's namespace only: the table goes away with it.
    dropAll(ns, true);
    const started = Date.now();
    await waitFor(
      () => gateway.services.get('silent')!.handler.live === 0,
      20_000,
      'the gateway to let go of the vanished client',
    );
    const took = Date.now() - started;
    assert.ok(took < 20_000, `closed after ${took} ms`);
    await waitFor(() => pooled() === 0, 5_000, 'the pooled connection to the silent backend to close');
  });
});
