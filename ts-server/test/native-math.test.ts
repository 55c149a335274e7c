// The native engine's own exp and tanh (native/src/transcendental-inl.h), which the
// multiplicative, hybrid and exp-sign kernels evaluate per element, held to
// float64 over the whole float32 range: every 256th bit pattern of both
// signs (16.7M inputs, from the subnormals to infinity and NaN) and the
// special values. The bounds are the ones transcendental-inl.h states.
import { strict as assert } from 'assert';
import { loadNative, nativeLoadError, type NativeAddon } from '../src/engine/native';

const expected = process.env.MUR_EXPECT_NATIVE_ENGINE === '1';
const STRIDE = 256;
const CHUNK = 1 << 20;

/** The spacing of float32 values at |y| (y a float32 value): 2^-149 below the normals, 2^104 beyond the largest. */
function ulp(y: number): number {
  const a = Math.abs(y);
  if (a < 2 ** -126) return 2 ** -149;
  if (!Number.isFinite(a)) return 2 ** 104;
  return 2 ** (Math.floor(Math.log2(a)) - 23);
}

/**
 * The largest error of fn over every STRIDE-th bit pattern, in ulps of the
 * float32 nearest the float64 value (ref). Non-finite references must be
 * matched exactly (NaN for NaN, the same infinity).
 */
function worst(addon: NativeAddon, fn: 'exp' | 'tanh', ref: (x: number) => number): { ulps: number; at: number } {
  const bits = new Uint32Array(CHUNK);
  const x = new Float32Array(bits.buffer);
  const out = new Float32Array(CHUNK);
  let w = { ulps: 0, at: 0 };
  for (let start = 0; start < 2 ** 32; start += CHUNK * STRIDE) {
    for (let i = 0; i < CHUNK; i++) bits[i] = start + i * STRIDE;
    addon.math(fn, x, out);
    for (let i = 0; i < CHUNK; i++) {
      const r = ref(x[i]);
      const got = out[i];
      // tanh: never past 1 in magnitude (the multiplicative rule's bounded step, docs/update-rules.md)
      if (fn === 'tanh') assert.ok(!(Math.abs(got) > 1), `tanh(${x[i]}) = ${got}, beyond 1`);
      if (Number.isNaN(r)) {
        assert.ok(Number.isNaN(got), `${fn}(${x[i]}) = ${got}, expected NaN`);
        continue;
      }
      if (!Number.isFinite(r) || !Number.isFinite(got)) {
        // exp overflows: the float32 of r is infinity, or r is just below it and rounds to the largest float.
        const e = Math.abs(got - r) / ulp(Math.fround(r));
        assert.ok(got === Math.fround(r) || e <= 2, `${fn}(${x[i]}) = ${got}, expected ${r}`);
        continue;
      }
      const e = Math.abs(got - r) / ulp(Math.fround(r));
      if (e > w.ulps) w = { ulps: e, at: x[i] };
    }
  }
  return w;
}

describe('native engine exp and tanh (the rule kernels)', function () {
  this.timeout(120000);
  let addon: NativeAddon;
  before(function () {
    const a = loadNative();
    if (!a && !expected) this.skip();
    assert.ok(a, `the native engine addon did not load: ${nativeLoadError()}`);
    addon = a;
  });

  const run = (fn: 'exp' | 'exp_bounded' | 'tanh', xs: number[]) => {
    const out = new Float32Array(xs.length);
    addon.math(fn, Float32Array.from(xs), out);
    return [...out];
  };

  it('exp is within 2 ulp of float64 over the whole float32 range', () => {
    const w = worst(addon, 'exp', Math.exp);
    console.log(`      exp: worst ${w.ulps.toFixed(3)} ulp at ${w.at}`);
    assert.ok(w.ulps <= 2, `exp(${w.at}) is ${w.ulps} ulp off`);
  });

  it('tanh is within 6 ulp of float64 over the whole float32 range', () => {
    const w = worst(addon, 'tanh', Math.tanh);
    console.log(`      tanh: worst ${w.ulps.toFixed(3)} ulp at ${w.at}`);
    assert.ok(w.ulps <= 6, `tanh(${w.at}) is ${w.ulps} ulp off`);
  });

  it('exp_bounded (the exp-sign rule, |eta| g_bound <= 86) is exp bit for bit on [-86, 86]', () => {
    // Every 256th bit pattern of both signs whose value is within 86: from the subnormals to 86.
    const bits = new Uint32Array(CHUNK);
    const x = new Float32Array(bits.buffer);
    const full = new Float32Array(CHUNK);
    const bounded = new Float32Array(CHUNK);
    let compared = 0;
    for (let start = 0; start < 2 ** 32; start += CHUNK * STRIDE) {
      let n = 0;
      for (let i = 0; i < CHUNK; i++) {
        bits[n] = start + i * STRIDE;
        if (Math.abs(x[n]) <= 86) n++;
      }
      const xs = x.subarray(0, n);
      addon.math('exp', xs, full.subarray(0, n));
      addon.math('exp_bounded', xs, bounded.subarray(0, n));
      for (let i = 0; i < n; i++) {
        if (!Object.is(full[i], bounded[i])) assert.fail(`exp(${xs[i]}): ${full[i]}, exp_bounded: ${bounded[i]}`);
      }
      compared += n;
    }
    assert.ok(compared > 8_000_000, `${compared} inputs compared`);
    assert.deepEqual(run('exp_bounded', [86, -86]), run('exp', [86, -86]));
  });

  it('gets the special values right', () => {
    const big = 3.4028234663852886e38;
    const tiny = 2 ** -149;
    const [t0, tn0, tinf, tninf, tnan, tbig, ttiny, tntiny] = run('tanh', [0, -0, Infinity, -Infinity, NaN, -big, tiny, -tiny]);
    assert.ok(Object.is(t0, 0) && Object.is(tn0, -0), 'tanh keeps the sign of zero');
    assert.deepEqual([tinf, tninf, tbig], [1, -1, -1]);
    assert.ok(Number.isNaN(tnan));
    assert.deepEqual([ttiny, tntiny], [tiny, -tiny], 'tanh(x) = x for the smallest subnormals');
    const [e0, en0, einf, eninf, enan, ebig, enbig, e89, em104] = run('exp', [0, -0, Infinity, -Infinity, NaN, big, -big, 89, -104]);
    assert.deepEqual([e0, en0, einf, eninf, ebig, enbig, e89, em104], [1, 1, Infinity, 0, Infinity, 0, Infinity, 0]);
    assert.ok(Number.isNaN(enan));
    // The smallest subnormal result and its neighbours: exp(ln 2^-149) = 2^-149.
    const [s] = run('exp', [Math.log(tiny)]);
    assert.equal(s, tiny);
  });

  it('computes the same bits in the vector body and the one-lane tail', () => {
    // 37 elements: the body covers the first multiple of the vector width, the tail the rest.
    const xs = Array.from({ length: 37 }, (_, i) => (i - 18) * 0.37);
    for (const fn of ['exp', 'exp_bounded', 'tanh'] as const) {
      const whole = run(fn, xs);
      const single = xs.map((x) => run(fn, [x])[0]); // one element: the tail alone
      assert.deepEqual(whole, single, fn);
    }
  });

  it('refuses bad arguments', () => {
    assert.throws(() => addon.math('log' as 'exp', new Float32Array(1), new Float32Array(1)), /'exp', 'exp_bounded' or 'tanh'/);
    assert.throws(() => addon.math('exp', new Float32Array(2), new Float32Array(1)), /one length/);
    assert.throws(() => addon.math('exp', new Float64Array(1) as unknown as Float32Array, new Float32Array(1)), /Float32Arrays/);
  });
});
