// The native engine's addon itself: it built and loads (a failure when
// MUR_EXPECT_NATIVE_ENGINE=1, as `make test` sets), it agrees with the
// TypeScript tables, its threads and its one-lane tails compute exactly what
// one thread and full vectors do, its layout guard refuses bad jobs without
// writing, and its finiteness scan finds the first NaN or infinity anywhere.
// The maths itself is held to the references by the engine table, the torch
// golden trajectories and the rule properties, which run on `native` too.
import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import { ADDON_PATH, loadNative, NativeEngine, nativeLoadError, type NativeAddon } from '../src/engine/native';
import { choice, flag, nullablePair, num, pair, triple } from '../src/engine/hypers';
import { OPTIMIZERS } from '../src/optimizers';
import { resolveGroup, resolveSpec } from '../src/registry';
import { RULES } from '../src/rules';
import { Session } from '../src/session/session';
import { halfToFloatBits } from '../src/wire/tensors';

const expected = process.env.MUR_EXPECT_NATIVE_ENGINE === '1';

/** A deterministic generator (LCG) so failures reproduce. */
function rand(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (1664525 * s + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
}
const randomArray = (n: number, seed: number, scale = 1) => {
  const r = rand(seed);
  return Float32Array.from({ length: n }, () => r() * scale);
};

describe('native engine addon', () => {
  let addon: NativeAddon;
  before(function () {
    const a = loadNative();
    if (!a && !expected) this.skip(); // not built here: the tfjs engines still run every other test
    assert.ok(a, `the native engine addon did not load: ${nativeLoadError()}`);
    addon = a;
  });
  /** A job's optimizer slots padded with nulls to the addon's kMaxOptSlots. */
  const optSlots = (xs: Array<Float32Array | null>) => [
    ...xs,
    ...new Array<null>(addon.describe().layout.maxOptSlots - xs.length).fill(null),
  ];

  it('loads and reports its SIMD target and threads', () => {
    const d = addon.describe();
    console.log(`      SIMD target ${d.target}, ${d.threads} threads`);
    assert.match(d.target, /^[A-Z0-9_]+$/);
    assert.ok(d.threads >= 1);
  });

  it('scans alike with and without its prefetch (MUR_SCAN_PREFETCH=1 and 0): the same index and digest', () => {
    // The prefetch is a per-process choice (prefetch.h), so each side runs in a child process of its own.
    const script = `
      const a = require(${JSON.stringify(ADDON_PATH)});
      const r = (s) => () => ((s = (1664525 * s + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
      const out = [];
      for (const [n, bad] of [[0, -1], [5, -1], [1000003, -1], [1000003, 999999], [70000, 3]]) {
        const g = r(n + 7), x = Float32Array.from({ length: n }, g);
        if (bad >= 0) x[bad] = NaN;
        out.push(a.scan(x));
      }
      console.log(JSON.stringify({ prefetch: a.describe().scanPrefetch, out }));`;
    const run = (on: string) => {
      const env = { ...process.env, MUR_SCAN_PREFETCH: on };
      return JSON.parse(execFileSync(process.execPath, ['-e', script], { env, encoding: 'utf8' })) as {
        prefetch: boolean;
        out: Array<[number, string]>;
      };
    };
    const on = run('1'),
      off = run('0');
    assert.equal(on.prefetch, true);
    assert.equal(off.prefetch, false);
    assert.deepEqual(on.out, off.out);
    assert.deepEqual(
      on.out.map(([i]) => i),
      [-1, -1, -1, 999999, 3],
    );
    assert.equal(new Set(on.out.map(([, d]) => d)).size, on.out.length, 'different arrays, different digests');
  });

  it("has every optimizer and rule, with the TypeScript tables' hyperparameters and slots", () => {
    // The constructor compares the slot lists and throws on any difference.
    const engine = new NativeEngine(addon, OPTIMIZERS, RULES);
    assert.equal(engine.name, 'native');
    const d = addon.describe();
    // L-BFGS has no kernel: the session steps it in TypeScript (session/lbfgs.ts).
    for (const def of [...OPTIMIZERS.filter((o) => !o.closure), ...RULES]) {
      const desc = [...d.optimizers, ...d.rules].find((x) => x.name === def.name)!;
      const h = resolveGroup(
        resolveSpec({
          optimizer: OPTIMIZERS.includes(def as never) ? def.name : 'sgd',
          rule: RULES.includes(def as never) ? def.name : 'additive',
          defaults: { lr: 0.1 },
        }),
        '',
      );
      const width = { pair: 2, triple: 3 } as Record<string, number | undefined>;
      const flattened = def.hypers.flatMap((x) =>
        width[x.type] ? Array.from({ length: width[x.type]! }, (_, i) => `${x.name}.${i}`) : [x.name],
      );
      // Entries from the parameter's shape ("#rows": Adafactor) follow the table's.
      const fromTable = desc.hypers.filter((x) => !x.startsWith('#'));
      assert.deepEqual(fromTable, flattened, `${def.name}: the addon reads its hyperparameters in this order`);
      for (const x of def.hypers) {
        if (x.type === 'pair') (x.items?.some((b) => b.nullable) ? nullablePair : pair)(h, x.name);
        else if (x.type === 'triple') triple(h, x.name);
        else if (x.type === 'choice') choice(h, x.name);
        else if (x.type === 'boolean') flag(h, x.name);
        else num(h, x.name);
      }
    }
  });

  for (const [optimizer, rule, hypers] of [
    ['adam', 'hybrid', { lr_out: 0.01, gamma: 0.7, amsgrad: true }],
    ['rmsprop', 'multiplicative', { centered: true, momentum: 0.5, lr_out: 0.01 }],
    ['sgd', 'exp_sign', { lr: 0.01, momentum: 0.9, nesterov: true }],
    ['lion', 'additive', { weight_decay: 0.1 }],
    ['rprop', 'hybrid', { lr_out: 0.01 }],
    ['asgd', 'multiplicative', { t0: 1, lr_out: 0.01 }],
    // The norm pass: a large tensor spans many tasks, whose sums are joined in one order.
    ['lamb', 'additive', { lr: 0.01, weight_decay: 0.1 }],
    ['lars', 'hybrid', { lr: 0.1, nesterov: true, lr_out: 0.01 }],
    // Row and column sweeps on the pool: a 640 x 1000 matrix (tasks of 32 rows, blocks of 256 columns), a
    // stack of 3 x 1001 matrices whose vectors cross row ends, and vectors.
    ['adafactor', 'additive', { weight_decay: 0.1 }],
    ['adafactor', 'hybrid', { lr_out: 0.01, d: 1.2 }],
  ] as const) {
    it(`${optimizer} x ${rule}: both threads give bit for bit what one thread gives (large tensor, 300 small ones, odd tails)`, () => {
      const shapes = [
        [1 << 18],
        [3, 1001],
        ...(optimizer === 'adafactor'
          ? [
              [640, 1000],
              [2, 3, 1001],
            ]
          : []),
        ...Array.from({ length: 300 }, (_, i) => [i % 3 === 0 ? 96 : 97]),
      ];
      const run = (threads: number) => {
        const engine = new NativeEngine(addon, OPTIMIZERS, RULES);
        engine.setThreads(threads);
        const decls = shapes.map((shape, i) => ({
          id: `p${i}`,
          name: `p${i}`,
          shape,
          group: '',
          values: randomArray(
            shape.reduce((a, b) => a * b, 1),
            i + 1,
          ),
        }));
        const s = new Session('threads', resolveSpec({ optimizer, rule, defaults: hypers }), decls, engine);
        try {
          let out: Float32Array[] = [];
          for (let t = 1; t <= 3; t++) {
            const grads = decls.map((d, i) => ({ id: d.id, data: randomArray(d.values.length, 1000 * t + i, 0.1) }));
            out = s.step(t, grads).values.map((v) => v.data.slice());
          }
          return out;
        } finally {
          s.dispose();
          engine.setThreads(0);
        }
      };
      const one = run(1);
      const all = run(2);
      one.forEach((a, i) => assert.ok(Buffer.from(a.buffer).equals(Buffer.from(all[i].buffer)), `tensor ${i} differs`));
      // The step really moved every tensor.
      assert.ok(one.every((a) => a.some((v) => v !== 0)));
    });
  }

  it("every kernel gives the same bits whatever the buffers' alignment (vector body, one-lane peel and tail)", () => {
    const d = addon.describe();
    const n = 97;
    for (const [oi, o] of d.optimizers.entries()) {
      for (const [ri, r] of d.rules.entries()) {
        const results: Float32Array[] = [];
        for (const shift of [0, 1, 2, 3, 5]) {
          // Each array sits `shift` floats into its own buffer, so its alignment differs per run.
          const mk = (f: (i: number) => number, len = n) => {
            const b = new Float32Array(len + shift);
            for (let i = 0; i < len; i++) b[shift + i] = f(i);
            return b.subarray(shift);
          };
          const theta = mk((i) => Math.sin(i + 1));
          const grad = mk((i) => Math.cos(0.7 * i) * 0.3);
          // Adafactor on a vector (its shape entries 0, below) has no row_var and col_var.
          const vectorOnly = o.name === 'adafactor' ? ['row_var', 'col_var'] : [];
          const slots = Array.from({ length: d.layout.maxOptSlots }, (_, k) => k).map((k) =>
            k < o.slots.length && !vectorOnly.includes(o.slots[k].name)
              ? mk(() => (o.slots[k].scalar ? 1 : 0.01), o.slots[k].scalar ? 1 : n)
              : null,
          );
          const ruleSlot = r.slots.length ? mk(() => 2, 1) : null;
          const h = new Float64Array(d.layout.hyperBlock);
          h[0] = 3;
          h[d.layout.rowsHyper] = 1; // Muon: a 1 x n matrix
          h[1] = 0.01;
          // Every table value 0.5 (betas, alphas, rates in range), booleans set.
          o.hypers.forEach((x, i) => (h[2 + i] = x.startsWith('#') ? 0 : 0.5)); // shape entries: a vector
          r.hypers.forEach((_, i) => (h[16 + i] = 0.5));
          addon.step(oi, ri, [theta, grad, ...slots, ruleSlot], h, new Uint32Array(1));
          results.push(theta.slice());
        }
        for (const x of results.slice(1)) {
          assert.ok(Buffer.from(x.buffer).equals(Buffer.from(results[0].buffer)), `${o.name} x ${r.name}: bits depend on alignment`);
        }
      }
    }
  });

  it('adafactor: a factored tensor gives the same bits whatever the alignment (rows of 13 floats cross vectors)', () => {
    const d = addon.describe();
    const oi = d.optimizers.findIndex((o) => o.name === 'adafactor');
    const [B, R, C] = [2, 7, 13];
    const n = B * R * C;
    for (const [ri, r] of d.rules.entries()) {
      const results: Float32Array[] = [];
      for (const shift of [0, 1, 2, 3, 5]) {
        const mk = (f: (i: number) => number, len: number) => {
          const b = new Float32Array(len + shift);
          for (let i = 0; i < len; i++) b[shift + i] = f(i);
          return b.subarray(shift);
        };
        const theta = mk((i) => Math.sin(i + 1), n);
        const grad = mk((i) => Math.cos(0.7 * i) * 0.3, n);
        const rows = mk(() => 0.01, B * R);
        const cols = mk(() => 0.01, B * C);
        const h = new Float64Array(d.layout.hyperBlock);
        h[0] = 3;
        h[1] = 0.01;
        [0.01, -0.8, 1e-30, 1e-3, 1, 0.1, 1, R, C].forEach((v, i) => (h[2 + i] = v));
        r.hypers.forEach((_, i) => (h[16 + i] = 0.5));
        addon.step(oi, ri, [theta, grad, ...optSlots([rows, cols]), r.slots.length ? mk(() => 2, 1) : null], h, new Uint32Array(1));
        results.push(Float32Array.from([...theta, ...rows, ...cols]));
      }
      for (const x of results.slice(1)) {
        assert.ok(Buffer.from(x.buffer).equals(Buffer.from(results[0].buffer)), `adafactor x ${r.name}: bits depend on alignment`);
      }
    }
  });

  it('changing the thread count between steps never loses a worker (200 switches, a large step after each)', () => {
    const n = 1 << 20; // above the thresholds: every step wakes the pool
    const theta = new Float32Array(n).fill(1);
    const grad = new Float32Array(n).fill(0.01);
    const h = new Float64Array(addon.describe().layout.hyperBlock);
    h[0] = 1;
    h[1] = 0.1;
    try {
      for (let k = 0; k < 200; k++) {
        addon.setThreads(k % 2 === 0 ? 2 : 1);
        addon.step(0, 0, [theta, grad, ...optSlots([]), null], h, new Uint32Array(1));
        assert.ok(addon.firstNonFinite(grad) === -1);
      }
      assert.ok(Math.abs(theta[n - 1] - (1 - 200 * 0.1 * 0.01)) < 1e-4);
    } finally {
      addon.setThreads(0);
    }
  });

  it('refuses a job with a wrongly sized slot before writing anything', () => {
    const theta = Float32Array.from([1, 2, 3]);
    const grad = Float32Array.from([0.1, 0.1, 0.1]);
    const m = new Float32Array(3);
    const shortV = new Float32Array(2);
    const block = addon.describe().layout.hyperBlock;
    // Two jobs: the first is valid, the second bad; neither may be applied.
    const ok = [theta, grad, ...optSlots([m, new Float32Array(3)]), null];
    const bad = [Float32Array.from([4, 5, 6]), grad, ...optSlots([new Float32Array(3), shortV]), null];
    const hyp = new Float64Array(2 * block);
    hyp.set([1, 0.1, 0.1, 0.9, 0.999, 1e-8, 0, 0], 0);
    hyp.set([1, 0.1, 0.1, 0.9, 0.999, 1e-8, 0, 0], block);
    assert.throws(() => addon.step(1, 0, [...ok, ...bad], hyp, new Uint32Array(2)), /job 1: slot 'exp_avg_sq' has 2 elements, expected 3/);
    assert.deepEqual(Array.from(theta), [1, 2, 3]);
    assert.deepEqual(Array.from(m), [0, 0, 0]);
    // A missing required slot (AMSGrad's) is refused by the kernel's prepare step, also before any write.
    hyp[7] = 1; // amsgrad
    assert.throws(() => addon.step(1, 0, [...ok, ...ok], hyp, new Uint32Array(2)), /max_exp_avg_sq' is missing/);
    assert.deepEqual(Array.from(theta), [1, 2, 3]);
    assert.throws(() => addon.step(99, 0, [], new Float64Array(0), new Uint32Array(0)), /unknown optimizer id 99/);
  });

  it('finds the first NaN or infinity at every position, in vector bodies and tails', () => {
    for (const n of [1, 7, 16, 63, 64, 65, 130]) {
      const a = randomArray(n, n);
      assert.equal(addon.firstNonFinite(a), -1, `n=${n}: all finite`);
      for (let i = 0; i < n; i++) {
        for (const bad of [NaN, Infinity, -Infinity]) {
          const b = a.slice();
          b[i] = bad;
          if (i + 1 < n) b[n - 1] = NaN; // a later one must not hide the first
          assert.equal(addon.firstNonFinite(b), i, `n=${n}: ${bad} at ${i}`);
        }
      }
    }
    assert.equal(addon.firstNonFinite(new Float32Array(0)), -1);
    assert.equal(addon.firstNonFinite(Float32Array.of(3.4e38, -3.4e38, 1e-45)), -1, 'large and subnormal values are finite');
  });

  it('widens bfloat16 bytes to float32 exactly, at any alignment, and refuses mismatched sizes', () => {
    const r = rand(7);
    for (const n of [0, 1, 15, 16, 17, 1000, 65537]) {
      for (const offset of [0, 1]) {
        const src = new Uint8Array(2 * n + offset).subarray(offset);
        src.forEach((_, i) => (src[i] = Math.floor((r() + 1) * 128)));
        const out = new Float32Array(n);
        addon.widenBf16(src, out);
        const bits = new Uint32Array(out.buffer);
        for (let i = 0; i < n; i++)
          assert.equal(bits[i], ((src[2 * i] | (src[2 * i + 1] << 8)) << 16) >>> 0, `n=${n} offset=${offset} [${i}]`);
      }
    }
    assert.throws(() => addon.widenBf16(new Uint8Array(3), new Float32Array(2)), /2 bytes per dst element/);
    assert.throws(() => addon.widenBf16(new Float32Array(2) as unknown as Uint8Array, new Float32Array(1)), /expected a Uint8Array/);
  });

  it('widens every float16 bit pattern exactly as the TypeScript reference does, at any alignment', () => {
    const all = new Uint8Array(2 * 65536 + 1).subarray(1); // misaligned on purpose
    for (let h = 0; h < 65536; h++) {
      all[2 * h] = h & 0xff;
      all[2 * h + 1] = h >> 8;
    }
    const out = new Float32Array(65536);
    addon.widenF16(all, out);
    const bits = new Uint32Array(out.buffer);
    for (let h = 0; h < 65536; h++) assert.equal(bits[h], halfToFloatBits(h), `half 0x${h.toString(16)}`);
    // Spot values: 1, -2, 65504 (largest), 2^-24 (smallest subnormal), infinity.
    const want: Array<[number, number]> = [
      [0x3c00, 1],
      [0xc000, -2],
      [0x7bff, 65504],
      [0x0001, 2 ** -24],
      [0x7c00, Infinity],
      [0x8000, -0],
    ];
    for (const [h, v] of want) assert.ok(Object.is(out[h], v), `half 0x${h.toString(16)} -> ${out[h]}, want ${v}`);
    assert.ok(Number.isNaN(out[0x7e00]));
  });

  it('sums squares in double precision', () => {
    const a = Float32Array.from({ length: 1001 }, (_, i) => (i % 7) - 3);
    const want = Array.from(a).reduce((s, v) => s + v * v, 0);
    assert.equal(addon.sumSquares(a), want);
  });
});
