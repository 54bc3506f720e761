/**
 * Settings the gateway would ignore or misuse are refused at load time, each
 * with the file, the line and the field, through the real loader.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseDuration } from '../../src/config/duration.ts';
import { parseConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/errors.ts';

/** One service; `lines` follow `backends:`, so the first of them is line 5 (6 with `protocol`). */
function service(lines: string, protocol?: 'tcp' | 'http'): string {
  return [
    'services:',
    '  - name: a',
    ...(protocol === undefined ? [] : [`    protocol: ${protocol}`]),
    '    listen: 127.0.0.1:1',
    '    backends: { static: [127.0.0.1:2] }',
    ...lines
      .trimEnd()
      .split('\n')
      .map((l) => `    ${l}`),
    '',
  ].join('\n');
}

/** Assert that `yaml` is refused at `line`, on `field`, with a message matching `message`. */
function refused(yaml: string, line: number, field: string, message: RegExp): void {
  assert.throws(
    () => parseConfig(yaml, 'f.yaml'),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.equal(err.field, field, err.message);
      assert.equal(err.line, line, err.message);
      assert.match(err.message, message);
      assert.ok(err.message.startsWith(`f.yaml:${line}: ${field}: `), err.message);
      return true;
    },
  );
}

describe('HTTP-only fields on a tcp service', () => {
  const HTTP_ONLY: Record<string, string> = {
    upstream: 'upstream: { protocol: http2 }',
    tls: 'tls: { cert: c.pem, key: k.pem }',
    retries: 'retries: 0',
    retryBudget: 'retryBudget: { ratio: 0.5 }',
    httpTimeouts: 'httpTimeouts: { request: 5s }',
    http2: 'http2: { maxConcurrentStreams: 100 }',
    headerLimits: 'headerLimits: { maxSize: 4096 }',
    websocket: 'websocket: { ping: off }',
    maxConnectionAge: 'maxConnectionAge: 10m',
  };

  for (const [field, line] of Object.entries(HTTP_ONLY)) {
    test(`${field} is refused on a tcp service, at its line, and accepted on an http one`, () => {
      refused(
        service(`timeouts: { connect: 1s }\n${line}`),
        6,
        `services[0].${field}`,
        /applies to protocol: http only, and this service is protocol: tcp \(the default\); remove it, or set protocol: http$/,
      );
      refused(service(line, 'tcp'), 6, `services[0].${field}`, /this service is protocol: tcp; remove it/);
      assert.doesNotThrow(() => parseConfig(service(line, 'http'), 'f.yaml'));
    });
  }

  test('the fields the TCP plane reads stay accepted on a tcp service', () => {
    const config = parseConfig(
      service(
        [
          'timeouts: { connect: 1s, idle: 10m }',
          'tcpKeepAlive: 10s',
          'limits: { maxConnections: 10, maxConnectionsPerBackend: 5 }',
          'sourceAddresses: [127.0.0.1]',
          'drain: { timeout: 5s }',
          'rebalance: { minAge: 1s }',
          'health: { interval: 5s }',
          'outlierDetection: { consecutiveFailures: 2 }',
        ].join('\n'),
        'tcp',
      ),
    );
    const s = config.services[0]!;
    assert.equal(s.timeouts.idle, 600_000);
    assert.equal(s.rebalance?.minAge, 1_000);
    // The HTTP fields keep their defaults in the parsed shape, unused by the TCP plane.
    assert.equal(s.retries, 2);
  });
});

describe('netmask and netmask6 where nothing reads them', () => {
  for (const field of ['netmask', 'netmask6'] as const) {
    const value = field === 'netmask' ? 24 : 64;
    test(`${field} is refused at its line unless the policy is maglev with hashKey: source-ip`, () => {
      const message = new RegExp(
        `${field} applies only to balance: maglev with hashKey: source-ip; remove it$`,
      );
      for (const policy of ['least-connections', 'round-robin', 'random', 'p2c']) {
        refused(service(`balance: ${policy}\n${field}: ${value}`), 6, `services[0].${field}`, message);
      }
      // No balance: the tcp default, least-connections.
      refused(service(`${field}: ${value}`), 5, `services[0].${field}`, message);
      // Maglev hashing something other than the client address.
      for (const hashKey of ['five-tuple', 'header:x-user', 'cookie:session']) {
        refused(
          service(`balance: maglev\nhashKey: "${hashKey}"\n${field}: ${value}`, 'http'),
          8,
          `services[0].${field}`,
          message,
        );
      }
      refused(service(`balance: maglev\n${field}: ${value}`), 6, `services[0].${field}`, message);
    });

    test(`${field} beside persistence on another policy points at persistence.${field}`, () => {
      refused(
        service(`persistence: { timeout: 5m }\n${field}: ${value}`),
        6,
        `services[0].${field}`,
        new RegExp(`for persistence, set persistence\\.${field} instead$`),
      );
      const ok = parseConfig(service(`persistence: { timeout: 5m, ${field}: ${value} }`));
      assert.equal(ok.services[0]!.persistence?.[field], value);
    });
  }

  test('maglev with hashKey: source-ip takes both', () => {
    const config = parseConfig(service('balance: maglev\nhashKey: source-ip\nnetmask: 24\nnetmask6: 64'));
    assert.equal(config.services[0]!.netmask, 24);
    assert.equal(config.services[0]!.netmask6, 64);
  });
});

describe('durations too short to work', () => {
  /** [field as written under the service, the path to set it, protocol, floor, takes off]. */
  const FIELDS: [string, string, 'tcp' | 'http', string, boolean][] = [
    ['timeouts.connect', 'timeouts: { connect: <d> }', 'tcp', '10ms', false],
    ['timeouts.idle', 'timeouts: { idle: <d> }', 'tcp', '50ms', true],
    ['tcpKeepAlive', 'tcpKeepAlive: <d>', 'tcp', '1s', false],
    ['persistence.timeout', 'persistence: { timeout: <d> }', 'tcp', '50ms', false],
    ['peakEwma.decay', 'balance: p2c\npeakEwma: { decay: <d> }', 'http', '10ms', false],
    ['health.interval', 'health: { interval: <d>, timeout: 10ms }', 'tcp', '50ms', false],
    ['health.timeout', 'health: { timeout: <d> }', 'tcp', '10ms', false],
    [
      'outlierDetection.baseEjectionTime',
      'outlierDetection: { baseEjectionTime: <d> }',
      'tcp',
      '50ms',
      false,
    ],
    [
      'outlierDetection.maxEjectionTime',
      'outlierDetection: { baseEjectionTime: 50ms, maxEjectionTime: <d> }',
      'tcp',
      '50ms',
      false,
    ],
    ['rebalance.minAge', 'rebalance: { minAge: <d> }', 'tcp', '10ms', false],
    ['httpTimeouts.request', 'httpTimeouts: { request: <d> }', 'http', '10ms', true],
    ['httpTimeouts.clientIdle', 'httpTimeouts: { clientIdle: <d> }', 'http', '50ms', true],
    ['http2.ping.interval', 'http2: { ping: { interval: <d> } }', 'http', '50ms', true],
    ['http2.ping.timeout', 'http2: { ping: { timeout: <d> } }', 'http', '10ms', true],
    ['websocket.ping.interval', 'websocket: { ping: { interval: <d> } }', 'http', '50ms', false],
    ['websocket.ping.timeout', 'websocket: { ping: { timeout: <d> } }', 'http', '10ms', false],
    ['websocket.closeTimeout', 'websocket: { closeTimeout: <d> }', 'http', '10ms', false],
    ['maxConnectionAge', 'maxConnectionAge: <d>', 'http', '50ms', false],
  ];
  // `service()` writes `protocol:` on line 3, so the snippet starts on line 6.
  const line = (snippet: string): number => 6 + snippet.split('\n').length - 1;

  for (const [field, snippet, protocol, floor, takesOff] of FIELDS) {
    test(`${field}: 0s and anything under ${floor} are refused, naming the floor${takesOff ? '; 0s and off mean off' : ''}`, () => {
      const at = (d: string): string => service(snippet.replace('<d>', d), protocol);
      const offHint = takesOff
        ? ', or "off" for none'
        : field === 'tcpKeepAlive' || field === 'maxConnectionAge'
          ? ', or "off"'
          : '';
      const underFloor = `${parseDuration(floor)! - 1}ms`;
      for (const d of takesOff ? [underFloor] : ['0s', underFloor]) {
        refused(
          at(d),
          line(snippet),
          `services[0].${field}`,
          new RegExp(
            `^f\\.yaml:\\d+: \\S+: "${d}" is too short: write at least ${floor}${offHint.replace(/[()]/g, '\\$&')}$`,
          ),
        );
      }
      assert.doesNotThrow(() => parseConfig(at(floor)));
      if (takesOff) {
        for (const d of ['0s', 'off']) assert.doesNotThrow(() => parseConfig(at(d)), d);
      }
    });
  }

  test('the discovery sources refuse intervals, back-offs and timeouts under their floor', () => {
    const withSource = (source: string): string =>
      `services:\n  - name: a\n    listen: 127.0.0.1:1\n    backends:\n      ${source}\n`;
    const cases: [string, string, string][] = [
      ['file: { path: b.yaml, pollInterval: <d> }', 'backends.file.pollInterval', '50ms'],
      ['dns: { name: b.local, port: 80, minInterval: <d> }', 'backends.dns.minInterval', '50ms'],
      [
        'dns: { name: b.local, port: 80, minInterval: 50ms, maxInterval: <d> }',
        'backends.dns.maxInterval',
        '50ms',
      ],
      ['dns: { name: b.local, port: 80, timeout: <d> }', 'backends.dns.timeout', '10ms'],
      ['kubernetes: { service: b, backoff: <d> }', 'backends.kubernetes.backoff', '50ms'],
      [
        'kubernetes: { service: b, backoff: 50ms, maxBackoff: <d> }',
        'backends.kubernetes.maxBackoff',
        '50ms',
      ],
    ];
    for (const [source, field, floor] of cases) {
      refused(
        withSource(source.replace('<d>', '0s')),
        5,
        `services[0].${field}`,
        new RegExp(`"0s" is too short: write at least ${floor}$`),
      );
      assert.doesNotThrow(() => parseConfig(withSource(source.replace('<d>', floor))), field);
    }
  });

  test('0s keeps its meaning where it has one: drain at once, no slow-start ramp, no default RTT', () => {
    const config = parseConfig(
      service(
        'drain: { timeout: 0s }\nslowStart: { window: 0s }\nbalance: p2c\npeakEwma: { defaultRtt: 0s }',
      ),
    );
    const s = config.services[0]!;
    assert.equal(s.drain.timeout, 0);
    assert.equal(s.slowStart?.window, 0);
  });

  test('a health timeout longer than the interval says both values', () => {
    refused(
      service('health: { interval: 1s }'),
      5,
      'services[0].health.timeout',
      /2s must not be longer than interval \(1s\); set a shorter timeout$/,
    );
  });
});

describe('a lower bound longer than its upper bound', () => {
  const withSource = (source: string): string =>
    `services:\n  - name: a\n    listen: 127.0.0.1:1\n    backends:\n${source}`;
  /**
   * Each pair: its fields and defaults, the path of its block, and `yaml`,
   * which writes a service with `body` (lines indented for the block) in it.
   */
  const PAIRS: {
    block: string;
    lo: string;
    hi: string;
    loDefault: string;
    hiDefault: string;
    yaml: (body: string) => string;
    path: string;
  }[] = [
    {
      block: 'kubernetes',
      lo: 'backoff',
      hi: 'maxBackoff',
      loDefault: '500ms',
      hiDefault: '30s',
      yaml: (body) => withSource(`      kubernetes:\n        service: b\n${body}`),
      path: 'services[0].backends.kubernetes',
    },
    {
      block: 'outlierDetection',
      lo: 'baseEjectionTime',
      hi: 'maxEjectionTime',
      loDefault: '30s',
      hiDefault: '5m',
      yaml: (body) =>
        service(`outlierDetection:\n  consecutiveFailures: 3\n${body.replace(/^ {8}/gm, '  ')}`),
      path: 'services[0].outlierDetection',
    },
    {
      block: 'dns',
      lo: 'minInterval',
      hi: 'maxInterval',
      loDefault: '1s',
      hiDefault: '1m',
      yaml: (body) => withSource(`      dns:\n        name: b.local\n        port: 80\n${body}`),
      path: 'services[0].backends.dns',
    },
  ];
  /** The line of `field` in `yaml`. */
  const lineOf = (yaml: string, field: string): number =>
    yaml.split('\n').findIndex((l) => l.trimStart().startsWith(`${field}:`)) + 1;

  for (const p of PAIRS) {
    test(`${p.block}: ${p.lo} longer than ${p.hi} is refused with both values and what to change`, () => {
      // Both written: at the upper bound.
      const both = p.yaml(`        ${p.lo}: 2s\n        ${p.hi}: 1s\n`);
      refused(
        both,
        lineOf(both, p.hi),
        `${p.path}.${p.hi}`,
        new RegExp(
          `: ${p.lo} \\(2s\\) is longer than ${p.hi} \\(1s\\); set ${p.hi} to at least 2s, or ${p.lo} to at most 1s$`,
        ),
      );
      // Only the lower bound written, past the upper one's default: at the lower bound.
      const lo = p.yaml(`        ${p.lo}: 1h\n`);
      refused(
        lo,
        lineOf(lo, p.lo),
        `${p.path}.${p.lo}`,
        new RegExp(
          `: ${p.lo} \\(1h\\) is longer than ${p.hi} \\(${p.hiDefault}, the default\\); set ${p.hi} to at least 1h, or ${p.lo} to at most ${p.hiDefault}$`,
        ),
      );
      // Only the upper bound written, under the lower one's default: at the upper bound.
      const hi = p.yaml(`        ${p.hi}: 50ms\n`);
      refused(
        hi,
        lineOf(hi, p.hi),
        `${p.path}.${p.hi}`,
        new RegExp(
          `: ${p.lo} \\(${p.loDefault}, the default\\) is longer than ${p.hi} \\(50ms\\); set ${p.hi} to at least ${p.loDefault}, or ${p.lo} to at most 50ms$`,
        ),
      );
      // Equal bounds are fine.
      assert.doesNotThrow(() => parseConfig(p.yaml(`        ${p.lo}: 2s\n        ${p.hi}: 2s\n`), 'f.yaml'));
    });
  }
});

describe('tcpKeepAlive in whole seconds', () => {
  test('a fraction of a second is accepted, as documented: the kernel drops it (1.5s acts as 1s)', () => {
    const config = parseConfig(service('tcpKeepAlive: 1.5s'));
    assert.equal(config.services[0]!.tcpKeepAlive, 1_500);
  });
});

describe('an unknown field says what was meant', () => {
  test('a misspelt field: the field it is closest to', () => {
    refused(
      service('tcpKeepalive: 5s'),
      5,
      'services[0]',
      /unknown field "tcpKeepalive" \(did you mean "tcpKeepAlive"\?\)/,
    );
    refused(
      service('health: { type: tcp, intervall: 1s }'),
      5,
      'services[0].health',
      /did you mean "interval"\?/,
    );
    // At the top level, rather than "services is required".
    assert.throws(
      () => parseConfig('servces: []\n', 'f.yaml'),
      /^ConfigError: f\.yaml:1: unknown field "servces" \(did you mean "services"\?\)/,
    );
  });

  test('a shortened field: the fields it starts', () => {
    refused(service('retry: 2', 'http'), 6, 'services[0]', /did you mean "retries" or "retryBudget"\?/);
  });

  test('a field in the wrong map: where it belongs, and what this map takes', () => {
    refused(
      service('timeouts: { request: 5s }', 'http'),
      6,
      'services[0].timeouts',
      /unknown field "request" \(it belongs in services\[\]\.httpTimeouts; fields here: connect, idle\); check the spelling against docs\/config\.md/,
    );
  });

  test('nothing like any field: just the advice', () => {
    refused(
      service('bogus: 1'),
      5,
      'services[0]',
      /unknown field "bogus"; check the spelling against docs\/config\.md$/,
    );
  });
});
