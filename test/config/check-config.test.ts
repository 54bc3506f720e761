/**
 * `holdfast check-config` as a user runs it: settings the gateway would
 * ignore or misuse make it exit 1 with the file, line, field and what to do.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { runHoldfast, writeConfig } from '../helpers/gateway.ts';

const head = 'services:\n  - name: x\n    listen: 127.0.0.1:1\n    backends: { static: [127.0.0.1:2] }\n';

describe('holdfast check-config refuses settings that would not work', () => {
  const cases: [string, string, RegExp][] = [
    [
      'an HTTP-only field on a tcp service',
      `${head}    websocket: { ping: off }\n`,
      /:5: services\[0\]\.websocket: applies to protocol: http only, and this service is protocol: tcp \(the default\); remove it, or set protocol: http/,
    ],
    [
      'netmask on a policy that does not read it',
      `${head}    balance: round-robin\n    netmask: 24\n`,
      /:6: services\[0\]\.netmask: netmask applies only to balance: maglev with hashKey: source-ip; remove it/,
    ],
    [
      'a health check interval of 0s',
      `${head}    health: { interval: 0s }\n`,
      /:5: services\[0\]\.health\.interval: "0s" is too short: write at least 50ms/,
    ],
    [
      'a backends file polled every 0s',
      'services:\n  - name: x\n    listen: 127.0.0.1:1\n    backends:\n      file: { path: backends.yaml, pollInterval: 0s }\n',
      /:5: services\[0\]\.backends\.file\.pollInterval: "0s" is too short: write at least 50ms/,
    ],
    [
      'a connect timeout of 0s',
      `${head}    timeouts: { connect: 0s }\n`,
      /:5: services\[0\]\.timeouts\.connect: "0s" is too short: write at least 10ms/,
    ],
    [
      'tcpKeepAlive: 0s, which is not off',
      `${head}    tcpKeepAlive: 0s\n`,
      /:5: services\[0\]\.tcpKeepAlive: "0s" is too short: write at least 1s, or "off"/,
    ],
  ];
  for (const [what, text, expected] of cases) {
    test(`${what}: exits 1 naming the file, line and field`, async () => {
      const file = writeConfig(text);
      const proc = runHoldfast(['check-config', file]);
      const { code } = await proc.exited();
      assert.equal(code, 1, proc.stderr());
      assert.match(proc.stderr(), expected);
      assert.ok(proc.stderr().includes(`${file}:`), 'the message names the file');
      assert.match(proc.stderr(), /\[HOLDFAST_ERR_CONFIG\]/);
    });
  }

  test('0s where it means off passes: timeouts.idle and the HTTP timeouts', async () => {
    const file = writeConfig(
      'services:\n  - name: t\n    listen: 127.0.0.1:1\n    backends: { static: [127.0.0.1:2] }\n    timeouts: { idle: 0s }\n' +
        '  - name: h\n    protocol: http\n    listen: 127.0.0.1:3\n    backends: { static: [127.0.0.1:2] }\n' +
        '    httpTimeouts: { request: off, clientIdle: 0s }\n    http2: { ping: { interval: 0s, timeout: off } }\n',
    );
    const proc = runHoldfast(['check-config', file]);
    assert.equal((await proc.exited()).code, 0, proc.stderr());
  });
});
