/** A ws echo backend as its own process (so a test can SIGSTOP it). Prints its port on stdout. */
import { WebSocketServer } from 'ws';

const server = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] ?? 0) });
server.on('listening', () => {
  const { port } = server.address() as { port: number };
  process.stdout.write(`${port}\n`);
  server.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.send(`hello from ${port}`);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});
