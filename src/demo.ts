/**
 * The embedded default behind `npm start` / `holdfast serve` without a
 * config: three small TCP backends on loopback and a gateway in front of them.
 */
import { createServer, type Server } from 'node:net';
import type { Config } from './config/schema.ts';
import { parseConfig } from './config/load.ts';

export const DEMO_CONFIG_YAML = `# holdfast's embedded demo: one TCP service over three local backends.
admin: { listen: 127.0.0.1:9901 }
services:
  - name: demo
    protocol: tcp
    listen: [127.0.0.1:7000, 127.0.0.1:7001]
    balance: least-connections
    backends:
      static: [127.0.0.1:7101, 127.0.0.1:7102, { address: 127.0.0.1:7103, weight: 2 }]
    drain: { timeout: 10s }
`;

export function demoConfig(): Config {
  return parseConfig(DEMO_CONFIG_YAML, '<embedded demo>');
}

/**
 * A line echo server that says who it is, so a person can see where the
 * balancer put each connection.
 */
export async function startDemoBackends(ports: readonly number[]): Promise<Server[]> {
  return Promise.all(
    ports.map(
      (port, i) =>
        new Promise<Server>((resolve, reject) => {
          const name = `backend-${i + 1} (127.0.0.1:${port})`;
          let open = 0;
          const server = createServer((socket) => {
            open++;
            socket.on('error', () => {});
            socket.on('close', () => open--);
            socket.write(`hello from ${name}; ${open} connection(s) here. Type a line and it comes back.\n`);
            socket.setEncoding('utf8');
            socket.on('data', (data: string) => socket.write(`${name}: ${data}`));
          });
          server.once('error', reject);
          server.listen(port, '127.0.0.1', () => resolve(server));
        }),
    ),
  );
}

export const DEMO_BACKEND_PORTS = [7101, 7102, 7103] as const;

export function demoHelp(): string {
  return [
    '',
    'holdfast demo is running: a gateway on 127.0.0.1:7000 and :7001 over three backends',
    '(7101, 7102 and 7103 with weight 2), balanced by least-connections.',
    '',
    'Try, in other terminals:',
    '  nc 127.0.0.1 7000              # open a few of these and watch them spread',
    '  curl -s 127.0.0.1:9901/status  # where every connection is',
    '  curl -s 127.0.0.1:9901/metrics | grep holdfast_backend_connections',
    '',
    'Ctrl-C drains the connections and stops. For a real config: holdfast serve --config FILE',
    '',
  ].join('\n');
}
