/**
 * HTTP/1.1 pipelining against a client that does not read: the gateway must
 * not fetch (and hold) every pipelined response it cannot deliver.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { dial, waitFor } from '../helpers/net.ts';
import { useHttpService } from './backends.ts';

const BODY = 16 * 1024;
const COUNT = 3000;

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
