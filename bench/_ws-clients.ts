/** Bench helper process: ws clients driven over IPC (throughput runs, idle connection pools). */
import { WebSocket } from 'ws';

type Cmd =
  | { cmd: 'throughput'; port: number; conns: number; seconds: number; size: number; window: number }
  | { cmd: 'open'; port: number; n: number }
  | { cmd: 'close' };

let pool: WebSocket[] = [];

function open(port: number): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function throughput(c: Extract<Cmd, { cmd: 'throughput' }>): Promise<number> {
  const conns = await Promise.all(Array.from({ length: c.conns }, () => open(c.port)));
  const payload = Buffer.alloc(c.size, 0x61);
  let received = 0;
  let running = true;
  for (const ws of conns) {
    ws.on('message', () => {
      received++;
      if (running) ws.send(payload);
    });
    for (let i = 0; i < c.window; i++) ws.send(payload);
  }
  await new Promise((r) => setTimeout(r, 500)); // warm up
  const start = received;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, c.seconds * 1000));
  const n = received - start;
  const dt = (performance.now() - t0) / 1000;
  running = false;
  for (const ws of conns) ws.terminate();
  return n / dt;
}

process.on('message', (m: Cmd) => {
  void (async () => {
    if (m.cmd === 'throughput') process.send!({ msgsPerSec: await throughput(m) });
    else if (m.cmd === 'open') {
      for (let i = 0; i < m.n; i += 200) {
        const batch = await Promise.all(Array.from({ length: Math.min(200, m.n - i) }, () => open(m.port)));
        for (const ws of batch) ws.on('error', () => {});
        pool.push(...batch);
      }
      process.send!({ opened: pool.length });
    } else {
      for (const ws of pool) ws.terminate();
      pool = [];
      process.send!({ closed: true });
    }
  })().catch((err: unknown) => process.send!({ error: String(err) }));
});
