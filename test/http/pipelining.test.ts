/**
 * HTTP/1.1 pipelining against a client that does not read: the gateway must
 * not fetch (and hold) every pipelined response it cannot deliver.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Gateway } from '../../src/gateway.ts';
import { startGateway } from '../helpers/gateway.ts';
import { dial, freePorts, waitFor } from '../helpers/net.ts';
import { useHttpService } from './backends.ts';

const BODY = 16 * 1024;
const COUNT = 3000;
const COUNT_503 = 80_000;

describe('HTTP/1.1 pipelining', () => {
  const svc = useHttpService('pipelined', '', (req, res) => {
    const n = /n=(\d+)/.exec(req.url ?? '')?.[1] ?? '?';
    const body = Buffer.alloc(BODY, 120);
    body.write(`<${n}>`);
    res.writeHead(200, { 'content-length': BODY });
    res.end(body);
    return true;
  });

  it('a client that pipelines without reading holds back its later requests, then gets every response in order', async () => {
    const socket = await dial(svc.port);
    socket.pause();
    const requests = (from: number, to: number): string => {
      let text = '';
      for (let n = from; n < to; n++) text += `GET /?n=${n} HTTP/1.1\r\nHost: h\r\n\r\n`;
      return text;
    };
    // Requests trickle in, ten per packet, and the client reads nothing. 1,500
    // responses of 16 KB are 24 MB: far more than the kernel's socket buffers
    // hold, so after a while only what fits there (and one response queued
    // behind it) may have been fetched, and further requests must wait.
    const trickle = async (from: number, to: number): Promise<void> => {
      for (let n = from; n < to; n += 10) {
        socket.write(requests(n, n + 10));
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    await trickle(0, 1500);
    await new Promise((r) => setTimeout(r, 300));
    const filled = svc.backend.served;
    assert.ok(filled < 1000, `the backend served ${filled} of 1500 requests for a client that reads nothing`);
    await trickle(1500, COUNT);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(
      svc.backend.served - filled < 20,
      `${svc.backend.served - filled} more requests served while the client still read nothing`,
    );
    let received = 0;
    let next = 0;
    let outOfOrder = -1;
    let carry = '';
    socket.on('data', (d: Buffer) => {
      received += d.length;
      // Each body starts with its request's marker `<n>`: they must come in order.
      const text = carry + d.toString('latin1');
      const re = /<(\d+)>/g;
      let end = 0;
      for (let m = re.exec(text); m !== null; m = re.exec(text)) {
        if (Number(m[1]) === next) next++;
        else if (outOfOrder < 0) outOfOrder = Number(m[1]);
        end = re.lastIndex;
      }
      carry = text.slice(Math.max(end, text.length - 12));
    });
    socket.resume();
    await waitFor(() => next === COUNT || outOfOrder >= 0, 30_000, 'every response');
    assert.equal(outOfOrder, -1, 'responses arrive in request order');
    assert.equal(svc.backend.served, COUNT);
    assert.ok(received >= COUNT * BODY);
    socket.destroy();
  });
});

describe('HTTP/1.1 pipelining of requests the gateway answers itself', () => {
  const svc = {} as { gateway: Gateway; port: number; accepted: Socket[] };
  before(async () => {
    const [port, closed] = await freePorts(2);
    svc.port = port!;
    // One backend, on a port nobody listens on: once its health check has
    // failed, every request is answered on the spot with a 503.
    ({ gateway: svc.gateway } = await startGateway(`
services:
  - name: nobody
    protocol: http
    listen: 127.0.0.1:${svc.port}
    backends: { static: [127.0.0.1:${closed}] }
    health: { type: tcp, interval: 50ms, timeout: 50ms, unhealthyThreshold: 1, jitter: 0 }
`));
    const cluster = svc.gateway.services.get('nobody')!.cluster;
    await waitFor(
      () => [...cluster.backends.values()].every((b) => b.state === 'unhealthy'),
      5_000,
      'unhealthy',
    );
    // The gateway's side of each client connection, to see what it holds for the client.
    svc.accepted = [];
    const listener = [...svc.gateway.listeners.values()].find((l) => l.port === svc.port)!;
    const handler = listener.handler!;
    listener.attach((socket) => {
      svc.accepted.push(socket);
      handler(socket);
    });
  });
  after(async () => {
    await svc.gateway.shutdown();
  });

  it('a client that pipelines without reading is not answered faster than it reads, and then gets every answer in order', async () => {
    const socket = await dial(svc.port);
    socket.pause();
    await waitFor(() => svc.accepted.length === 1, 5_000, 'the gateway to accept');
    const gatewaySide = svc.accepted[0]!;
    // Short requests, each answered with a longer 503: HEAD now and then, so
    // that the answers only parse in the order the requests were sent.
    const methods: string[] = [];
    for (let n = 0; n < COUNT_503; n++) methods.push(n % 7 === 3 ? 'HEAD' : 'GET');
    let sent = 0;
    for (let n = 0; n < COUNT_503; n += 1000) {
      let text = '';
      for (let k = n; k < n + 1000; k++) text += `${methods[k]} /${k} HTTP/1.1\r\nHost: h\r\n\r\n`;
      socket.write(text);
      sent += text.length;
    }
    // And half-closes: every answer is still owed.
    socket.end();
    // Wait until the gateway stops reading: the kernel's buffers towards the client are full.
    let read = -1;
    await waitFor(
      async () => {
        const now = gatewaySide.bytesRead;
        if (now === read) return true;
        read = now;
        await new Promise((r) => setTimeout(r, 300));
        return false;
      },
      30_000,
      'the gateway to stop reading',
    );
    // 80,000 answers of ~200 bytes are far more than the kernel's buffers hold.
    assert.ok(read < sent, 'the gateway read every request of a client that read none of the answers');
    // At most one answer waits in the gateway itself (behind what the kernel holds).
    assert.ok(
      gatewaySide.writableLength < 1024,
      `the gateway holds ${gatewaySide.writableLength} bytes of answers for a client that reads nothing`,
    );
    let text = '';
    let answered = 0;
    let bad = '';
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      for (;;) {
        const end = text.indexOf('\r\n\r\n');
        if (end < 0) break;
        const head = text.slice(0, end);
        const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? NaN);
        const hasBody = methods[answered] === 'GET';
        if (!head.startsWith('HTTP/1.1 503 ') || Number.isNaN(length)) {
          bad ||= `answer ${answered}: ${JSON.stringify(head.slice(0, 80))}`;
          break;
        }
        const size = end + 4 + (hasBody ? length : 0);
        if (text.length < size) break;
        text = text.slice(size);
        answered++;
      }
    });
    const ended = once(socket, 'end');
    socket.resume();
    await waitFor(() => answered === COUNT_503 || bad !== '', 30_000, 'every answer');
    assert.equal(bad, '');
    // Then the gateway closes its side too, with nothing more.
    await ended;
    assert.equal(text, '');
    socket.destroy();
  });
});

describe('HTTP/1.1 pipelining, then a half-close', () => {
  // Its first answer, a 500, gets the one backend ejected: every later request is answered at once with a 503.
  const svc = useHttpService(
    'half-closed',
    '    outlierDetection: { consecutive5xx: 1, maxEjectionPercent: 100 }\n',
    (req, res) => {
      if (req.url !== '/fail') return false;
      res.writeHead(500, { 'content-length': 4 });
      res.end('fail');
      return true;
    },
  );

  it('a client that pipelines and half-closes while its first request is at the backend gets every answer before the gateway closes', async () => {
    const socket = await dial(svc.port);
    // Under 64 KB in all, so that the gateway reads them and the half-close
    // while it waits for the first answer.
    const count = 2400;
    let text = 'GET /fail HTTP/1.1\r\nHost: h\r\n\r\n';
    for (let n = 1; n < count; n++) text += 'GET / HTTP/1.1\r\nHost:h\r\n\r\n';
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.end(text);
    await once(socket, 'end');
    assert.ok(received.startsWith('HTTP/1.1 500 '));
    const answers = received.split('HTTP/1.1 503 ').length - 1;
    assert.equal(answers, count - 1, 'every pipelined request is answered');
    socket.destroy();
  });
});
