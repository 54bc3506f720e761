/**
 * An HTTP/1.1 client that closes its side in the middle of its request body
 * (a FIN, not a reset) can never finish that request. The gateway must let
 * it go: the request is abandoned upstream, its registration on the backend
 * and the client's connection are released, even while the backend is still
 * answering (an echo that streams back what it got and waits for the rest).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { before, describe, it } from 'node:test';
import { waitFor } from '../helpers/net.ts';
import { useHttpService } from './backends.ts';

describe('HTTP/1.1: a client gone in the middle of its request body', () => {
  const svc = useHttpService('web');
  let live: () => { backend: number; clients: number };
  before(() => {
    const service = svc.gateway.services.get('web')!;
    live = () => ({ backend: service.cluster.connectionCount, clients: service.handler.live });
  });

  for (const how of ['end', 'destroy'] as const) {
    it(`releases the request and the connection when the client ${how === 'end' ? 'half-closes' : 'closes'} while the backend streams its answer`, async () => {
      const client = connect(svc.port, '127.0.0.1');
      client.on('error', () => {});
      await once(client, 'connect');
      client.write(`POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n${'z'.repeat(3000)}`);
      // The backend has answered the head and echoed what it got: the response is under way.
      await new Promise<void>((resolve) => {
        let got = '';
        client.on('data', (d: Buffer) => {
          got += d.toString('latin1');
          if (got.split('z').length - 1 >= 3000) resolve();
        });
      });
      assert.deepEqual(live(), { backend: 1, clients: 1 });
      if (how === 'end') client.end();
      else client.destroy();
      await waitFor(
        () => live().backend === 0 && live().clients === 0,
        3000,
        'the request and the connection to be released',
      ).catch((err: unknown) => assert.fail(`${(err as Error).message}: ${JSON.stringify(live())}`));
      client.destroy();
    });
  }
});
