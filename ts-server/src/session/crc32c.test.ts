// CRC-32C against its published check values and a bit-at-a-time reference.
import { strict as assert } from 'assert';
import { crc32c } from './crc32c';

/** The definition, one bit at a time (reflected polynomial 0x82F63B78). */
function bitwise(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

describe('crc32c', () => {
  it('the standard check value: "123456789" -> 0xE3069283', () => {
    assert.equal(crc32c(Buffer.from('123456789', 'ascii')), 0xe3069283);
  });

  it("RFC 3720's test vectors (32 zeros, 32 x 0xFF, 0..31)", () => {
    assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
    assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
    assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e);
  });

  it('equals the bitwise definition at every length 0..100 and on a large buffer; pieces chain', () => {
    let s = 12345;
    const rand = () => (s = (1664525 * s + 1013904223) >>> 0) & 0xff;
    for (let n = 0; n <= 100; n++) {
      const a = Uint8Array.from({ length: n }, rand);
      assert.equal(crc32c(a), bitwise(a), `length ${n}`);
    }
    const big = Uint8Array.from({ length: 100_003 }, rand);
    assert.equal(crc32c(big), bitwise(big));
    for (const cut of [0, 1, 7, 8, 9, 50_000, 100_003]) {
      assert.equal(crc32c(big.subarray(cut), crc32c(big.subarray(0, cut))), bitwise(big), `split at ${cut}`);
    }
  });
});
