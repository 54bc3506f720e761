/**
 * Soak helper process (bench/_soak.ts): one backend on a fixed port, so that
 * it can be killed with SIGKILL and started again where the gateway expects it.
 *
 *   node bench/_soak-backend.ts h1 PORT    HTTP/1.1 + WebSocket echo
 *   node bench/_soak-backend.ts grpc PORT  gRPC test.Echo (Say, Chat)
 *   node bench/_soak-backend.ts tcp PORT   TCP echo
 *
 * Prints `ready` once listening. HTTP routes: `/` answers the port, `/echo`
 * sends the body back, `/slow?ms=N` waits first, `/big?kb=N` streams N KiB in
 * 16 KiB writes, `/health` answers 200.
 */
import { createServer as createHttp } from 'node:http';
import { createServer as createTcp } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { WebSocketServer } from 'ws';
import { echoService } from '../test/http/backends.ts';

const [kind, portText] = process.argv.slice(2);
const port = Number(portText);
const ready = (): void => void process.stdout.write('ready\n');

if (kind === 'h1') {
  const server = createHttp({ keepAliveTimeout: 60_000 }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    req.on('error', () => {});
    res.on('error', () => {});
    if (url.pathname === '/echo') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      req.pipe(res);
      return;
    }
    req.resume();
    if (url.pathname === '/big') {
      const chunk = Buffer.alloc(16 * 1024, 'x');
      let left = Number(url.searchParams.get('kb') ?? 256) / 16;
      res.writeHead(200, { 'content-length': String(left * chunk.length) });
      const pump = (): void => {
        while (left > 0) {
          left--;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
      return;
    }
    const ms = Number(url.searchParams.get('ms') ?? 0);
    const reply = (): void => void res.end(String(port));
    if (ms > 0) setTimeout(reply, ms);
    else reply();
  });
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  server.listen(port, '127.0.0.1', ready);
} else if (kind === 'grpc') {
  const server = new grpc.Server();
  server.addService(echoService, {
    say(call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      const text = call.request.toString();
      const reply = (): void => cb(null, Buffer.from(String(port)));
      if (text.startsWith('sleep:')) setTimeout(reply, Number(text.slice(6)));
      else reply();
    },
    chat(call: grpc.ServerDuplexStream<Buffer, Buffer>) {
      call.on('data', (m: Buffer) => call.write(m));
      call.on('end', () => call.end());
      call.on('error', () => {});
    },
  });
  server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err !== null) throw err;
    ready();
  });
} else if (kind === 'tcp') {
  const server = createTcp((socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  server.listen(port, '127.0.0.1', ready);
} else {
  throw new Error(`unknown backend kind ${kind}`);
}
