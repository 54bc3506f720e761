import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseHostPort } from '../../src/config/address.ts';
import { formatDuration, parseDuration } from '../../src/config/duration.ts';
import { parseConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/errors.ts';

describe('config', () => {
  test('the contract shape from the docs parses with defaults filled in', () => {
    const config = parseConfig(`
admin: { listen: 127.0.0.1:9901 }
services:
  - name: echo
    protocol: tcp
    listen: [127.0.0.1:7000, 127.0.0.1:7001]
    balance: least-connections
    backends:
      static: [127.0.0.1:7101, 127.0.0.1:7102, { address: 127.0.0.1:7103, weight: 2 }]
    drain: { timeout: 30s }
    sourceAddresses: [127.0.0.2, 127.0.0.3]
`);
    const s = config.services[0]!;
    assert.equal(s.listen.length, 2);
    assert.deepEqual(
      s.backends.static.map((b) => [b.address.port, b.weight]),
      [
        [7101, 1],
        [7102, 1],
        [7103, 2],
      ],
    );
    assert.equal(s.drain.timeout, 30_000);
    assert.equal(s.timeouts.connect, 5_000);
    assert.equal(s.tcpKeepAlive, 30_000);
  });

  test('errors are ConfigErrors with a stable code, the line and the field', () => {
    try {
      parseConfig(
        'services:\n  - name: a\n    listen: 127.0.0.1:1\n    backends: { static: [nope] }\n',
        'f.yaml',
      );
      assert.fail('should throw');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'HOLDFAST_ERR_CONFIG');
      assert.equal(err.file, 'f.yaml');
      assert.equal(err.line, 4);
      assert.equal(err.field, 'services[0].backends.static[0]');
    }
  });

  test('hashKey: sni is refused where holdfast does not terminate TLS, naming the line and field', () => {
    const yaml = (extra: string): string =>
      `services:\n  - name: a\n    listen: 127.0.0.1:1\n${extra}    balance: maglev\n    hashKey: sni\n    backends: { static: [127.0.0.1:2] }\n`;
    for (const extra of ['', '    protocol: http\n']) {
      assert.throws(
        () => parseConfig(yaml(extra), 'f.yaml'),
        (err: unknown) =>
          err instanceof ConfigError &&
          err.field === 'services[0].hashKey' &&
          err.line === (extra === '' ? 5 : 6) &&
          /terminates TLS/.test(err.message),
      );
    }
    const ok = parseConfig(yaml('    protocol: http\n    tls: { cert: c.pem, key: k.pem }\n'), 'f.yaml');
    assert.equal(ok.services[0]!.hashKey, 'sni');
  });

  test('a field inside one branch of a union is named itself, at its own line', () => {
    const yaml = (extra: string): string =>
      `services:\n  - name: a\n    protocol: http\n    listen: 127.0.0.1:1\n    backends: { static: [127.0.0.1:2] }\n${extra}`;
    const cases: [string, number, string, RegExp][] = [
      [
        '    websocket:\n      ping:\n        timeout: 5s\n        interval: soon\n',
        9,
        'services[0].websocket.ping.interval',
        /"soon" is not a duration/,
      ],
      [
        '    balance: p2c\n    peakEwma:\n      decay: 10\n',
        8,
        'services[0].peakEwma.decay',
        /write a duration/,
      ],
      [
        '    backends:\n      static:\n        - { address: 127.0.0.1:3, weight: -1 }\n',
        7,
        'services[0].backends.static[0].weight',
        /must be at least 0/,
      ],
    ];
    for (const [extra, line, field, message] of cases) {
      assert.throws(
        () =>
          parseConfig(
            yaml(extra).replace(
              '    backends: { static: [127.0.0.1:2] }\n',
              extra.includes('backends:') ? '' : '$&',
            ),
            'f.yaml',
          ),
        (err: unknown) =>
          err instanceof ConfigError && err.field === field && err.line === line && message.test(err.message),
        field,
      );
    }
  });

  test('a value that fits no branch of a union says what would', () => {
    const yaml = (extra: string): string =>
      `services:\n  - name: a\n    protocol: http\n    listen: 127.0.0.1:1\n    backends: { static: [127.0.0.1:2] }\n${extra}`;
    assert.throws(
      () => parseConfig(yaml('    websocket: { ping: on }\n'), 'f.yaml'),
      /f\.yaml:6: services\[0\]\.websocket\.ping: expected "off" or a map of fields/,
    );
    assert.throws(
      () => parseConfig(yaml('    maxConnectionAge: 30\n'), 'f.yaml'),
      /f\.yaml:6: services\[0\]\.maxConnectionAge: write a duration with its unit, such as 500ms, 30s, 5m or 1h/,
    );
  });

  test('durations', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('5m'), 300_000);
    assert.equal(parseDuration('2h'), 7_200_000);
    assert.equal(parseDuration('30'), undefined);
    assert.equal(parseDuration('-1s'), undefined);
    assert.equal(formatDuration(90_000), '90s');
    assert.equal(formatDuration(300_000), '5m');
  });

  test('addresses', () => {
    assert.deepEqual(parseHostPort('[::1]:80'), { host: '::1', port: 80 });
    assert.deepEqual(parseHostPort('svc.ns:8080'), { host: 'svc.ns', port: 8080 });
    assert.match(parseHostPort('::1:80') as string, /brackets/);
    assert.match(parseHostPort('127.0.0.1') as string, /not host:port/);
    assert.match(parseHostPort('127.0.0.1:0') as string, /outside 1-65535/);
  });
});
