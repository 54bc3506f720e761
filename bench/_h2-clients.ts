/**
 * Bench helper process for bench/_h2-idle.ts: HTTP/2 client connections
 * (node:http2) driven over IPC. `open` opens `n` more connections, each of
 * which makes one GET and reads its response to the end (so the proxy has
 * picked a backend and has a backend connection or pool), then stays open
 * and idle; node:http2 answers the proxy's PINGs by itself. `count` says how
 * many are open and how many were lost (closed or sent GOAWAY by the proxy);
 * `close` closes them all.
 */
import { connect, type ClientHttp2Session } from 'node:http2';

type Cmd = { cmd: 'open'; url: string; n: number; batch: number } | { cmd: 'count' } | { cmd: 'close' };

let pool: ClientHttp2Session[] = [];
let lost = 0;
let goaways = 0;

function openOne(url: string): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const s = connect(url, { rejectUnauthorized: false });
    s.on('error', reject);
    const req = s.request({ ':path': '/' }, { endStream: true });
    req.on('response', (h) => {
      if (h[':status'] !== 200) reject(new Error(`status ${String(h[':status'])}`));
    });
    req.on('error', reject);
    req.resume();
    req.on('end', () => {
      s.removeListener('error', reject);
      s.on('error', () => {});
      s.once('goaway', () => goaways++);
      s.once('close', () => lost++);
      resolve(s);
    });
  });
}

process.on('message', (m: Cmd) => {
  void (async () => {
    if (m.cmd === 'open') {
      for (let i = 0; i < m.n; i += m.batch) {
        const k = Math.min(m.batch, m.n - i);
        pool.push(...(await Promise.all(Array.from({ length: k }, () => openOne(m.url)))));
      }
      process.send!({ open: pool.length, lost, goaways });
    } else if (m.cmd === 'count') {
      process.send!({ open: pool.length, lost, goaways });
    } else {
      const all = pool;
      pool = [];
      for (const s of all) s.destroy();
      // Those were closed here, not lost.
      await new Promise((r) => setTimeout(r, 100));
      lost = 0;
      goaways = 0;
      process.send!({ closed: all.length });
    }
  })().catch((err: unknown) => process.send!({ error: String(err) }));
});
