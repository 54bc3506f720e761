/**
 * A backend host that vanishes without a FIN (its node is gone, a firewall
 * drops everything) is noticed by TCP keepalive on the gateway's upstream
 * leg, and the client's connection is closed so that it can reconnect
 * elsewhere — in seconds, not the two hours of the kernel's default.
 *
 * The backend runs in a network namespace of the test's own, reached over a
 * veth pair; nftables inside that namespace then drops every packet.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePort, readUntil, waitFor } from '../helpers/net.ts';
import {
  cleanupsAfterAll,
  dropAll,
  nodeInNamespace,
  privilegedSkipReason,
  vethNamespace,
} from '../helpers/privileged.ts';

const skip = privilegedSkipReason(['nft', 'ip']);
const id = process.pid % 10_000;
const ns = `hf-silent-${id}`;
const hostSide = `hfs${id}a`;
const nsSide = `hfs${id}b`;
// Addresses of this test's own two hosts, inside its own veth pair.
const hostIp = '10.213.7.1';
const backendIp = '10.213.7.2';
const cleanups = cleanupsAfterAll();

describe('silent backend', { skip }, () => {
  test('TCP keepalive finds a backend host that drops everything and the client is closed', async () => {
    vethNamespace({ ns, hostSide, nsSide, hostIp, nsIp: backendIp }, cleanups);

    const backendPort = 7300 + (id % 500);
    const backend = nodeInNamespace(
      ns,
      `require('node:net').createServer((s) => { s.on('error', () => {}); s.write('hello\\n'); s.pipe(s); })
         .listen(${backendPort}, '${backendIp}', () => console.log('ready'));`,
      cleanups,
    );
    await once(backend.stdout!, 'data');

    const port = await freePort();
    const { gateway } = await startGateway(`
services:
  - name: silent
    listen: 127.0.0.1:${port}
    tcpKeepAlive: 1s
    backends: { static: [${backendIp}:${backendPort}] }
`);
    cleanups.push(() => gateway.shutdown());
    const client = await dial(port);
    cleanups.push(() => void client.destroy());
    await readUntil(client, 'hello\n');

    // The backend host goes silent: no FIN, no RST, nothing.
    // (inside the test's namespace only: the table goes away with it)
    dropAll(ns);
    const started = Date.now();
    // The client's connection is reset: the stream did not end cleanly, and a
    // reset says so (a FIN could pass for a complete response).
    await new Promise((resolve) => client.once('close', resolve));
    const took = Date.now() - started;
    assert.ok(took < 20_000, `closed after ${took} ms`);
    await waitFor(
      () => gateway.services.get('silent')!.handler.live === 0,
      2_000,
      'the gateway let go of it',
    );
  });
});
