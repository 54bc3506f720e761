/**
 * HPACK (RFC 7541) as holdfast's HTTP/2 server decodes and encodes it: the
 * Appendix C examples (requests and responses, with and without Huffman,
 * dynamic table contents and evictions), the Huffman code, and malformed input.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HpackDecoder, HpackEncoder } from '../../src/proxy/h2/hpack.ts';
import { HUFFMAN_CODES, HUFFMAN_LENGTHS, huffmanDecode, huffmanEncode } from '../../src/proxy/h2/huffman.ts';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function decode(d: HpackDecoder, block: Buffer): [string, string][] | undefined {
  const out: [string, string][] = [];
  const ok = d.decode(block, 0, block.length, { field: (n, v) => out.push([n, v]) });
  return ok ? out : undefined;
}

interface Step {
  wire: string;
  fields: [string, string][];
  table: [string, string][];
  size: number;
}

function run(tableSize: number, steps: Step[]): void {
  const d = new HpackDecoder(tableSize);
  for (const [i, s] of steps.entries()) {
    assert.deepEqual(decode(d, hex(s.wire)), s.fields, `fields of block ${i + 1}`);
    assert.deepEqual(d.entries(), s.table, `table after block ${i + 1}`);
    assert.equal(d.size, s.size, `table size after block ${i + 1}`);
  }
}

const AUTH: [string, string] = [':authority', 'www.example.com'];
const REQ1: [string, string][] = [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], AUTH];
const REQ2: [string, string][] = [...REQ1, ['cache-control', 'no-cache']];
const REQ3: [string, string][] = [
  [':method', 'GET'],
  [':scheme', 'https'],
  [':path', '/index.html'],
  AUTH,
  ['custom-key', 'custom-value'],
];
const requests = (w1: string, w2: string, w3: string): Step[] => [
  { wire: w1, fields: REQ1, table: [AUTH], size: 57 },
  { wire: w2, fields: REQ2, table: [['cache-control', 'no-cache'], AUTH], size: 110 },
  {
    wire: w3,
    fields: REQ3,
    table: [['custom-key', 'custom-value'], ['cache-control', 'no-cache'], AUTH],
    size: 164,
  },
];

const DATE1 = 'Mon, 21 Oct 2013 20:13:21 GMT';
const DATE2 = 'Mon, 21 Oct 2013 20:13:22 GMT';
const LOC: [string, string] = ['location', 'https://www.example.com'];
const COOKIE = 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1';
const responses = (w1: string, w2: string, w3: string): Step[] => [
  {
    wire: w1,
    fields: [[':status', '302'], ['cache-control', 'private'], ['date', DATE1], LOC],
    table: [LOC, ['date', DATE1], ['cache-control', 'private'], [':status', '302']],
    size: 222,
  },
  {
    wire: w2,
    // `:status 302` is evicted to make room for `:status 307`.
    fields: [[':status', '307'], ['cache-control', 'private'], ['date', DATE1], LOC],
    table: [[':status', '307'], LOC, ['date', DATE1], ['cache-control', 'private']],
    size: 222,
  },
  {
    wire: w3,
    fields: [
      [':status', '200'],
      ['cache-control', 'private'],
      ['date', DATE2],
      LOC,
      ['content-encoding', 'gzip'],
      ['set-cookie', COOKIE],
    ],
    table: [
      ['set-cookie', COOKIE],
      ['content-encoding', 'gzip'],
      ['date', DATE2],
    ],
    size: 215,
  },
];

describe('HPACK decoder: RFC 7541 Appendix C', () => {
  it('C.3 requests without Huffman', () => {
    run(
      4096,
      requests(
        '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
        '8286 84be 5808 6e6f 2d63 6163 6865',
        '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65',
      ),
    );
  });

  it('C.4 requests with Huffman', () => {
    run(
      4096,
      requests(
        '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff',
        '8286 84be 5886 a8eb 1064 9cbf',
        '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf',
      ),
    );
  });

  it('C.5 responses without Huffman, 256-byte table with evictions', () => {
    run(
      256,
      responses(
        `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d`,
        '4803 3330 37c1 c0bf',
        `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31`,
      ),
    );
  });

  it('C.6 responses with Huffman, 256-byte table with evictions', () => {
    run(
      256,
      responses(
        `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`,
        '4883 640e ffc1 c0bf',
        `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
      ),
    );
  });

  it('C.2 literal representations: with indexing, without, never indexed, indexed', () => {
    const d = new HpackDecoder();
    assert.deepEqual(decode(d, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572')), [
      ['custom-key', 'custom-header'],
    ]);
    assert.equal(d.size, 55);
    assert.deepEqual(decode(d, hex('040c 2f73 616d 706c 652f 7061 7468')), [[':path', '/sample/path']]);
    assert.deepEqual(decode(d, hex('1008 7061 7373 776f 7264 0673 6563 7265 74')), [['password', 'secret']]);
    assert.deepEqual(decode(d, hex('82')), [[':method', 'GET']]);
    assert.deepEqual(d.entries(), [['custom-key', 'custom-header']], 'only the first was indexed');
  });
});

describe('HPACK decoder: errors and table size updates', () => {
  it('rejects index 0, indexes beyond the tables, truncated input and oversized integers', () => {
    for (const wire of ['80', 'be', 'ff00', '41', '410a61', '0f', 'ffffffffff0f', '4085']) {
      assert.equal(decode(new HpackDecoder(), hex(wire)), undefined, wire);
    }
  });

  it('a size update shrinks (and evicts), may not exceed the advertised size, and must come first', () => {
    const d = new HpackDecoder();
    decode(d, hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'));
    assert.equal(d.size, 55);
    // Size update to 0 (evicts everything), then back to 4096, then a field.
    assert.deepEqual(decode(d, hex('20 3fe11f 82')), [[':method', 'GET']]);
    assert.equal(d.size, 0);
    assert.equal(decode(d, hex('3fe21f')), undefined, 'beyond 4096');
    assert.equal(decode(d, hex('82 20')), undefined, 'after a field');
  });

  it('an entry larger than the table empties it and is not added', () => {
    const d = new HpackDecoder(64);
    decode(d, hex('4003 6162 6303 6465 66')); // abc: def (38)
    assert.equal(d.size, 38);
    const big = `40 03 616263 28 ${'61'.repeat(40)}`;
    assert.deepEqual(decode(d, hex(big)), [['abc', 'a'.repeat(40)]]);
    assert.equal(d.size, 0);
    assert.deepEqual(d.entries(), []);
  });
});

describe('Huffman code', () => {
  it('is the RFC 7541 Appendix B code (spot checks, and a complete prefix code)', () => {
    assert.equal(HUFFMAN_CODES[0], 0x1ff8);
    assert.equal(HUFFMAN_CODES[48], 0x0); // '0'
    assert.equal(HUFFMAN_CODES[97], 0x3); // 'a'
    assert.equal(HUFFMAN_CODES[255], 0x3ffffee);
    assert.equal(HUFFMAN_CODES[256], 0x3fffffff); // EOS
    assert.equal(HUFFMAN_LENGTHS[256], 30);
    // Kraft: the code lengths fill the code space exactly.
    let sum = 0;
    for (const len of HUFFMAN_LENGTHS) sum += 2 ** (30 - len);
    assert.equal(sum, 2 ** 30);
  });

  it('round-trips every byte value', () => {
    let all = '';
    for (let c = 0; c < 256; c++) all += String.fromCharCode(c);
    const enc = huffmanEncode(all);
    assert.equal(huffmanDecode(enc, 0, enc.length), all);
    assert.equal(huffmanEncode('www.example.com').toString('hex'), 'f1e3c2e5f23a6ba0ab90f4ff');
  });

  it('rejects EOS in the data, padding longer than seven bits, and padding that is not all ones', () => {
    const eos = Buffer.from([0xff, 0xff, 0xff, 0xfc]); // 30 ones then 00: EOS
    assert.equal(huffmanDecode(eos, 0, eos.length), undefined);
    assert.equal(huffmanDecode(Buffer.from([0xff]), 0, 1), undefined, 'eight bits of padding');
    assert.equal(huffmanDecode(Buffer.from([0x00]), 0, 1), undefined, "'0' then 000: not EOS's prefix");
    assert.equal(huffmanDecode(Buffer.from([0x07]), 0, 1), '0', "'0' then 111");
  });
});

describe('HPACK encoder', () => {
  it('encodes :status and fields that the decoder reads back', () => {
    const e = new HpackEncoder();
    const long = 'x'.repeat(300);
    for (const status of [200, 204, 404, 500, 302, 103]) {
      e.begin();
      e.status(status);
      e.field('content-type', 'text/plain');
      e.field('x-custom', long);
      e.field('set-cookie', 'a=1');
      const block = Buffer.from(e.block());
      assert.deepEqual(decode(new HpackDecoder(), block), [
        [':status', String(status)],
        ['content-type', 'text/plain'],
        ['x-custom', long],
        ['set-cookie', 'a=1'],
      ]);
    }
    e.begin();
    const line = Buffer.from('X-Mixed-Case: value');
    e.fieldBytes(line, 0, 12, 14, line.length);
    assert.deepEqual(decode(new HpackDecoder(), Buffer.from(e.block())), [['x-mixed-case', 'value']]);
  });
});
