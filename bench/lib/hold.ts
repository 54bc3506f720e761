/**
 * Bench helper process. `hold.ts server PORT`: accept connections, send one
 * byte on each, hold them open. `hold.ts client PORT N`: open N connections,
 * wait for the byte on each (so the whole chain through a proxy is up), print
 * `ready`, then hold them until killed.
 */
import { connect, createServer, type Socket } from 'node:net';

const [mode, portText, countText] = process.argv.slice(2);
const port = Number(portText);
const held: Socket[] = [];

if (mode === 'server') {
  const server = createServer((s) => {
    s.on('error', () => {});
    s.write('!');
    held.push(s);
  });
  server.listen({ port, host: '127.0.0.1', backlog: 8192 }, () => console.log('ready'));
} else if (mode === 'client') {
  const total = Number(countText);
  let ready = 0;
  let started = 0;
  const batch = (): void => {
    // Open in batches so the proxies' accept queues are not overrun.
    for (let i = 0; i < 200 && started < total; i++, started++) {
      const s = connect({ port, host: '127.0.0.1' });
      s.on('error', (err) => {
        console.error(`client connection failed: ${err.message}`);
        process.exit(1);
      });
      s.once('data', () => {
        ready++;
        if (ready === total) console.log('ready');
        else if (ready === started) setImmediate(batch);
      });
      held.push(s);
    }
  };
  batch();
} else {
  console.error('usage: hold.ts server PORT | client PORT N');
  process.exit(2);
}
