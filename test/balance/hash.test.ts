import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  hashFiveTuple31,
  hashSourceIp31,
  hashString31,
  hashStrings31,
  maskIp,
  murmur3,
  murmur3String,
  netmaskPrefix,
  parseIp,
} from '../../src/balance/hash.ts';
import { prng } from './_util.ts';

// Published MurmurHash3_x86_32 test vectors (SMHasher-derived, widely reproduced).
const VECTORS: [string, number, number][] = [
  ['', 0, 0],
  ['', 1, 0x514e28b7],
  ['', 0xffffffff, 0x81f16f39],
  ['\0\0\0\0', 0, 0x2362f9de],
  ['aaaa', 0x9747b28c, 0x5a97808a],
  ['aaa', 0x9747b28c, 0x283e0130],
  ['aa', 0x9747b28c, 0x5d211726],
  ['a', 0x9747b28c, 0x7fa09ea6],
  ['abcd', 0x9747b28c, 0xf0478627],
  ['abc', 0x9747b28c, 0xc84a62dd],
  ['ab', 0x9747b28c, 0x74875592],
  ['Hello, world!', 0x9747b28c, 0x24884cba],
  ['ππππππππ', 0x9747b28c, 0xd58063c1],
  ['The quick brown fox jumps over the lazy dog', 0x9747b28c, 0x2fa826cd],
  ['hello', 0, 0x248bfa47],
];

describe('murmur3 x86_32', () => {
  it('matches the published test vectors, over bytes and over strings', () => {
    const enc = new TextEncoder();
    for (const [input, seed, expected] of VECTORS) {
      assert.equal(murmur3(enc.encode(input), seed), expected, `bytes ${JSON.stringify(input)}`);
      assert.equal(murmur3String(input, seed), expected, `string ${JSON.stringify(input)}`);
    }
  });

  it('hashes strings as their UTF-8 bytes (astral, lone surrogates, ranges)', () => {
    const random = prng(1);
    const enc = new TextEncoder();
    const alphabet = ['a', 'Z', '0', 'é', 'π', '€', '😀', '\ud800', '\udc00', ';', ' '];
    for (let round = 0; round < 500; round++) {
      let s = '';
      const len = Math.floor(random() * 20);
      for (let i = 0; i < len; i++) s += alphabet[Math.floor(random() * alphabet.length)]!;
      const seed = Math.floor(random() * 2 ** 32);
      assert.equal(murmur3String(s, seed), murmur3(enc.encode(s), seed), JSON.stringify(s));
    }
    assert.equal(murmur3String('xxhelloyy', 0, 2, 7), 0x248bfa47);
    assert.equal(hashString31('hello'), 0x248bfa47 & 0x7fffffff);
  });

  it('keeps 31-bit hashes non-negative small integers', () => {
    for (let i = 0; i < 1000; i++) {
      const h = hashString31(`key-${i}`);
      assert.ok(h >= 0 && h <= 0x7fffffff && Number.isInteger(h));
    }
  });

  it('separates repeated header values', () => {
    assert.notEqual(hashStrings31(['ab', 'c']), hashStrings31(['a', 'bc']));
  });
});

describe('IP parsing and netmasks', () => {
  const w = new Uint32Array(4);
  const parse = (s: string): [number, string[]] => {
    w.fill(0);
    const f = parseIp(s, w);
    return [f, [...w].map((x) => x.toString(16))];
  };

  it('parses IPv4, IPv6 (compressed, embedded IPv4, zones) and maps ::ffff:a.b.c.d to IPv4', () => {
    assert.deepEqual(parse('10.0.0.1'), [4, ['a000001', '0', '0', '0']]);
    assert.deepEqual(parse('255.255.255.255'), [4, ['ffffffff', '0', '0', '0']]);
    assert.deepEqual(parse('::ffff:10.0.0.1'), [4, ['a000001', '0', '0', '0']]);
    assert.deepEqual(parse('::FFFF:a00:1'), [4, ['a000001', '0', '0', '0']]);
    assert.deepEqual(parse('::1'), [6, ['0', '0', '0', '1']]);
    assert.deepEqual(parse('::'), [6, ['0', '0', '0', '0']]);
    assert.deepEqual(parse('2001:db8::1'), [6, ['20010db8', '0', '0', '1']]);
    assert.deepEqual(parse('2001:DB8::'), [6, ['20010db8', '0', '0', '0']]);
    assert.deepEqual(parse('fe80::1%eth0'), [6, ['fe800000', '0', '0', '1']]);
    assert.deepEqual(parse('1:2:3:4:5:6:7:8'), [6, ['10002', '30004', '50006', '70008']]);
    assert.deepEqual(parse('1:2:3:4:5:6:1.2.3.4'), [6, ['10002', '30004', '50006', '1020304']]);
  });

  it('rejects what is not an address', () => {
    for (const bad of [
      '',
      'x',
      '1.2.3',
      '1.2.3.4.5',
      '256.1.1.1',
      '1..2.3',
      ':::',
      '1::2::3',
      '1:2:3:4:5:6:7:8:9',
      ':1::',
      '1:',
      '12345::',
      'g::1',
    ]) {
      assert.equal(parseIp(bad, w), 0, bad);
    }
  });

  it('masks IPv4 and IPv6 prefixes', () => {
    parseIp('192.168.1.77', w);
    maskIp(w, 4, 24);
    assert.equal(w[0], 0xc0a80100);
    parseIp('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff', w);
    maskIp(w, 6, 56);
    assert.deepEqual([...w], [0x20010db8, 0xaaaabb00, 0, 0]);
    parseIp('10.1.2.3', w);
    maskIp(w, 4, 0);
    assert.equal(w[0], 0);
  });

  it('reads netmasks as prefix lengths or dotted masks', () => {
    assert.equal(netmaskPrefix(24), 24);
    assert.equal(netmaskPrefix('255.255.255.0'), 24);
    assert.equal(netmaskPrefix('255.255.0.0'), 16);
    assert.equal(netmaskPrefix('0.0.0.0'), 0);
    assert.equal(netmaskPrefix('255.255.255.255'), 32);
    assert.equal(netmaskPrefix('/20'), 20);
    assert.equal(netmaskPrefix('255.0.255.0'), -1);
    assert.equal(netmaskPrefix(33), -1);
    assert.equal(netmaskPrefix(64, 128), 64);
  });
});

describe('balancing hashes', () => {
  it('hash a client network the same for every address in it', () => {
    assert.equal(hashSourceIp31('192.168.1.1', 24), hashSourceIp31('192.168.1.254', 24));
    assert.notEqual(hashSourceIp31('192.168.1.1', 24), hashSourceIp31('192.168.2.1', 24));
    assert.equal(hashSourceIp31('::ffff:192.168.1.9', 24), hashSourceIp31('192.168.1.1', 24));
    assert.equal(hashSourceIp31('2001:db8:1:2::1', 32, 64), hashSourceIp31('2001:db8:1:2:ffff::', 32, 64));
    assert.notEqual(hashSourceIp31('2001:db8:1:2::1', 32, 64), hashSourceIp31('2001:db8:1:3::1', 32, 64));
    assert.equal(hashSourceIp31('not-an-ip'), -1);
  });

  it('hash the 5-tuple on every field', () => {
    const base = hashFiveTuple31('10.0.0.1', 40000, '10.0.0.2', 443);
    assert.notEqual(base, hashFiveTuple31('10.0.0.1', 40001, '10.0.0.2', 443));
    assert.notEqual(base, hashFiveTuple31('10.0.0.3', 40000, '10.0.0.2', 443));
    assert.notEqual(base, hashFiveTuple31('10.0.0.1', 40000, '10.0.0.2', 444));
    assert.notEqual(base, hashFiveTuple31('10.0.0.1', 40000, '10.0.0.2', 443, 17));
  });

  it('are pinned by golden vectors (changing them moves every hashed flow)', () => {
    assert.equal(hashFiveTuple31('10.0.0.1', 40000, '10.0.0.2', 443), 1923500795);
    assert.equal(hashFiveTuple31('2001:db8::1', 40000, '2001:db8::2', 443), 707052256);
    assert.equal(hashSourceIp31('192.168.1.77', 24), 1904602049);
    assert.equal(hashSourceIp31('2001:db8:1:2::99', 32, 64), 1448842695);
    assert.equal(hashString31('holdfast'), 1525175447);
  });
});
