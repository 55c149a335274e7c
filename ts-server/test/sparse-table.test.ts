// The engine table for row-sparse gradients: every optimizer that takes
// them (sparseadam, sgd, adagrad) x every rule, 30 steps of a [6, 4] table
// whose touched rows change every step (one step touches none), through a
// real Session, against the float64 reference (refSparseStep). The rows a
// step does not touch keep their exact bits, in theta and in every slot.
import { strict as assert } from 'assert';
import { OPTIMIZERS } from '../src/optimizers';
import { resolveGroup, resolveSpec } from '../src/registry';
import { RULES } from '../src/rules';
import { Session } from '../src/session/session';
import { currentEngine } from '../src/engine/engine';
import { loadNative } from '../src/engine/native';
import { roundSlotAt } from './reference/bf16';
import { quantiseRows } from './reference/q8';
import { refSparseStep, type H, type RefState } from './reference/reference';

const ROWS = 6;
const LEN = 4;
const N = ROWS * LEN;
const STEPS = 30;
/** Row 5 is never touched; step 7 touches none. */
const touched = (t: number) => (t === 7 ? [] : [0, 1, 2, 3, 4].filter((r) => (r * 7 + t * 3) % 5 < 3));

const VARIANTS: Record<string, Array<Record<string, unknown>>> = {
  sparseadam: [{ lr: 0.01 }, { lr: 0.01, betas: [0.8, 0.99], eps: 1e-6 }],
  sgd: [{ lr: 0.05 }],
  adagrad: [{ lr: 0.05 }, { lr: 0.05, lr_decay: 0.01, initial_accumulator_value: 0.1 }],
};
const RULE_SETTINGS: Record<string, Record<string, unknown>> = {
  additive: {},
  multiplicative: { lr_out: 0.05 },
  hybrid: { lr_out: 0.05, gamma: 0.6 },
  exp_sign: {},
};

const theta0 = () => Array.from({ length: N }, (_, i) => Math.sin(1.3 * i + 0.4) * 0.8 + (i % 3 === 0 ? 0.05 : -0.1));
const gradient = (th: number[], rows: number[], t: number) =>
  rows.flatMap((r) => Array.from({ length: LEN }, (_, e) => 0.6 * Math.cos(0.7 * (r * LEN + e) + 0.3 * t) + 0.4 * th[r * LEN + e]));

// Tolerance: as engine-table.test.ts (float32 vs float64 over ~10 elementwise
// ops a step, 30 steps here: a random walk of a few u relative to |theta| <=
// 1.5), 1e-5 absolute + 1e-5 relative, while a row stepped that should not be,
// or SparseAdam's eps put inside the bias correction (Adam's), moves theta by
// 1e-3 or more.
const ATOL = 1e-5;
const RTOL = 1e-5;

describe('sparse table: row-sparse gradients, every optimizer that takes them x rule vs the float64 reference', () => {
  it('covers every optimizer that takes row-sparse gradients', () => {
    assert.deepEqual(
      OPTIMIZERS.filter((o) => o.sparse)
        .map((o) => o.name)
        .sort(),
      Object.keys(VARIANTS).sort(),
    );
  });

  for (const [optimizer, variants] of Object.entries(VARIANTS)) {
    for (const r of RULES) {
      for (const v of variants) {
        const hypers = { ...v, ...RULE_SETTINGS[r.name] };
        it(`${optimizer} x ${r.name} ${JSON.stringify(hypers)}`, () => {
          const spec = resolveSpec({ optimizer, rule: r.name, defaults: hypers });
          const h = resolveGroup(spec, '') as H;
          const start = Array.from(Float32Array.from(theta0()));
          const session = new Session('sparse', spec, [
            { id: 'e', name: 'e', shape: [ROWS, LEN], group: '', values: Float32Array.from(start) },
          ]);
          let ref = start.slice();
          const s: RefState = {};
          const rs: RefState = {};
          try {
            for (let t = 1; t <= STEPS; t++) {
              const rows = touched(t);
              const g = Array.from(Float32Array.from(gradient(ref, rows, t)));
              const out = session.step(t, [{ id: 'e', data: Float32Array.from(g), rows: Uint32Array.from(rows) }]).values[0];
              assert.deepEqual(Array.from(out.rows ?? []), rows, 'the reply carries the touched rows');
              ref = refSparseStep(optimizer, r.name, ref, rows, g, LEN, s, rs, h, t);
              rows.forEach((row, k) => {
                for (let e = 0; e < LEN; e++) {
                  const want = ref[row * LEN + e];
                  const got = out.data[k * LEN + e];
                  assert.ok(
                    Math.abs(got - want) <= ATOL + RTOL * Math.abs(want),
                    `step ${t} row ${row}[${e}]: engine ${got} vs reference ${want}`,
                  );
                }
              });
            }
            assert.ok(Math.max(...ref.map((x, i) => Math.abs(x - start[i]))) > 1e-3, 'theta barely moved');
            for (const tensor of session.exportTensors()) {
              if (tensor.slot.startsWith('rule.')) continue;
              const want = tensor.slot === '' ? ref : s[tensor.slot];
              assert.ok(want, `the reference has no slot '${tensor.slot}'`);
              tensor.data.forEach((x, i) => {
                const what = `${tensor.slot || 'theta'}[${i}]`;
                assert.ok(Math.abs(x - want[i]) <= ATOL + RTOL * Math.abs(want[i]), `${what}: engine ${x} vs reference ${want[i]}`);
              });
              // Row 5, never touched: the exact bits it started with (theta) or the slot's first value.
              const first =
                tensor.slot === '' ? start : new Array<number>(N).fill(tensor.slot === 'sum' ? (h.initial_accumulator_value as number) : 0);
              for (let i = 5 * LEN; i < N; i++)
                assert.equal(tensor.data[i], Math.fround(first[i]), `${tensor.slot || 'theta'}[${i}] of an untouched row changed`);
            }
          } finally {
            session.dispose();
          }
        });
      }
    }
  }
});

describe('rule properties on rows (sparseadam)', () => {
  it('multiplicative: each touched weight keeps its sign and moves at most eta_out |theta|, a zero stays zero, untouched rows keep their bits', () => {
    const spec = resolveSpec({ optimizer: 'sparseadam', rule: 'multiplicative', defaults: { lr: 0.01, lr_out: 0.2 } });
    const start = theta0();
    start[2] = 0; // row 0 holds a zero
    const session = new Session('props', spec, [{ id: 'e', name: 'e', shape: [ROWS, LEN], group: '', values: Float32Array.from(start) }]);
    try {
      let prev = Float32Array.from(start);
      for (let t = 1; t <= STEPS; t++) {
        const rows = touched(t);
        const g = Float32Array.from(gradient(Array.from(prev), rows, t).map((v) => 50 * v)); // large: tanh saturates
        session.step(t, [{ id: 'e', data: g, rows: Uint32Array.from(rows) }]);
        const now = [...session.exportTensors()].find((x) => x.slot === '')!.data;
        const etaOut = (0.2 * Math.sqrt(1 - 0.999 ** t)) / (1 - 0.9 ** t);
        for (let i = 0; i < N; i++) {
          if (!rows.includes(Math.floor(i / LEN))) {
            assert.equal(now[i], prev[i], `step ${t}: untouched element ${i} moved`);
            continue;
          }
          // float32 rounding of |x| tanh(.) eta_out: a few ulp of |x| beyond the bound.
          assert.ok(
            Math.abs(now[i] - prev[i]) <= etaOut * Math.abs(prev[i]) * (1 + 1e-5),
            `step ${t} element ${i}: moved past eta_out |x|`,
          );
          if (etaOut < 1) assert.ok(now[i] * prev[i] >= 0, `step ${t} element ${i}: changed sign`);
        }
        assert.equal(now[2], 0, 'a zero stays zero');
        prev = Float32Array.from(now);
      }
    } finally {
      session.dispose();
    }
  });

  it('hybrid with gamma 0 is the additive rule on the same rows (to rounding), gamma 1 the multiplicative one', () => {
    const run = (rule: string, extra: Record<string, unknown>) => {
      const s = new Session(
        'g',
        resolveSpec({ optimizer: 'sparseadam', rule, defaults: { lr: 0.01, ...(rule === 'additive' ? {} : { lr_out: 0.05 }), ...extra } }),
        [{ id: 'e', name: 'e', shape: [ROWS, LEN], group: '', values: Float32Array.from(theta0()) }],
      );
      try {
        for (let t = 1; t <= 10; t++) {
          const rows = touched(t);
          s.step(t, [{ id: 'e', data: Float32Array.from(gradient(theta0(), rows, t)), rows: Uint32Array.from(rows) }]);
        }
        return Array.from([...s.exportTensors()].find((x) => x.slot === '')!.data);
      } finally {
        s.dispose();
      }
    };
    const close = (a: number[], b: number[]) => a.every((v, i) => Math.abs(v - b[i]) <= 1e-6 * (1 + Math.abs(b[i])));
    assert.ok(close(run('hybrid', { gamma: 0 }), run('additive', {})), 'gamma 0 != additive');
    assert.ok(close(run('hybrid', { gamma: 1 }), run('multiplicative', {})), 'gamma 1 != multiplicative');
  });
});

/*
 * Compact state on rows (issue 23): SparseAdam's exp_avg and exp_avg_sq as
 * bfloat16 or q8, against the float64 reference that stores them the same way
 * (reference/bf16.ts roundSlotAt: the touched elements, with a dense store's
 * keys; reference/q8.ts quantiseRows: every block a touched row reaches,
 * quantised whole). Tolerances are the engine table's (engine-table.test.ts:
 * BF16_TOL / Q8_TOL 2e-4 on theta; a slot within two bfloat16 ulp or one q8 map
 * step of its largest element). A [300, 3] table's rows straddle q8 blocks
 * (256 is no multiple of 3) and its last rows, never touched, fill a block of
 * their own; the [6, 4] table is one block shared by every row.
 */
describe('sparse table: compact state (bfloat16, q8) on rows (sparseadam)', () => {
  const SEED = 7;
  const TOL = 2e-4;
  for (const dtype of ['bfloat16', 'q8'] as const) {
    for (const [rows0, len] of [
      [6, 4],
      [300, 3],
    ]) {
      it(`${dtype}, a [${rows0}, ${len}] table: the reference's stores; elements of untouched rows keep their bits (q8: while their block's absmax holds)`, function () {
        if (!currentEngine().storedStateDtypes.includes(dtype)) this.skip();
        const n = rows0 * len;
        const hypers = { lr: 0.01 };
        const spec = resolveSpec({ optimizer: 'sparseadam', rule: 'additive', defaults: hypers, state_dtype: dtype, state_seed: SEED });
        const h = resolveGroup(spec, '') as H;
        const start = Array.from(Float32Array.from({ length: n }, (_, i) => Math.sin(1.3 * i + 0.4) * 0.8));
        // Rows below rows0 - 10 as touched(t) picks them (by row mod 6); the last 10 rows never.
        const pick = (t: number) =>
          t === 7 ? [] : Array.from({ length: rows0 }, (_, r) => r).filter((r) => r < Math.max(5, rows0 - 10) && (r * 7 + t * 3) % 5 < 3);
        const session = new Session('sparse', spec, [
          { id: 'e', name: 'e', shape: [rows0, len], group: '', values: Float32Array.from(start) },
        ]);
        let ref = start.slice();
        const s: RefState = {};
        const rs: RefState = {};
        const absmax: Record<string, number[]> = { exp_avg: [], exp_avg_sq: [] };
        let prev = new Map<string, Float32Array>();
        let kept = 0;
        let regrown = 0;
        try {
          for (let t = 1; t <= STEPS; t++) {
            const rows = pick(t);
            const g = Array.from(
              Float32Array.from(
                rows.flatMap((r) =>
                  Array.from({ length: len }, (_, e) => 0.6 * Math.cos(0.7 * (r * len + e) + 0.3 * t) + 0.4 * ref[r * len + e]),
                ),
              ),
            );
            session.step(t, [{ id: 'e', data: Float32Array.from(g), rows: Uint32Array.from(rows) }]);
            ref = refSparseStep('sparseadam', 'additive', ref, rows, g, len, s, rs, h, t);
            const hit = new Set(rows);
            const touchedAt = (i: number) => hit.has(Math.floor(i / len));
            const grew: Record<string, Set<number>> = { exp_avg: new Set(), exp_avg_sq: new Set() };
            ['exp_avg', 'exp_avg_sq'].forEach((name, k) => {
              if (dtype === 'bfloat16') roundSlotAt(s[name], SEED, 0, t, k, touchedAt);
              else {
                const before = absmax[name].slice();
                quantiseRows(s[name], k === 1, absmax[name], touchedAt);
                absmax[name].forEach((a, b) => a > (before[b] ?? 0) && grew[name].add(b));
              }
            });
            const now = new Map([...session.exportTensors()].map((x) => [x.slot, x.data]));
            const theta = now.get('')!;
            theta.forEach((v, i) =>
              assert.ok(Math.abs(v - ref[i]) <= TOL + TOL * Math.abs(ref[i]), `step ${t} theta[${i}]: ${v} vs ${ref[i]}`),
            );
            for (const name of ['exp_avg', 'exp_avg_sq']) {
              const got = now.get(name)!;
              const want = s[name];
              const largest = Math.max(...want.map(Math.abs));
              got.forEach((v, i) => {
                const tol = dtype === 'bfloat16' ? 1e-6 + 2 ** -7 * Math.abs(want[i]) : 1e-6 + (0.9 / 64) * largest;
                assert.ok(Math.abs(v - want[i]) <= tol, `step ${t} ${name}[${i}]: ${v} vs ${want[i]}`);
              });
              const was = prev.get(name);
              if (!was) continue;
              for (let i = 0; i < n; i++) {
                if (touchedAt(i)) continue;
                if (dtype === 'q8' && grew[name].has(Math.floor(i / 256))) {
                  regrown++;
                  continue;
                }
                assert.equal(got[i], was[i], `step ${t} ${name}[${i}] (untouched) changed`);
                kept++;
              }
            }
            prev = now;
          }
        } finally {
          session.dispose();
        }
        assert.ok(kept > n, `untouched elements checked: ${kept}`);
        if (dtype === 'q8')
          console.log(`      ${kept} untouched slot elements kept their bits; ${regrown} re-quantised (their block's absmax grew)`);
      });
    }
    it(`${dtype}: an engine that keeps float32 takes row steps of it, on float32 state's trajectory`, function () {
      if (currentEngine().storedStateDtypes.includes(dtype)) this.skip();
      const make = (d: string) =>
        new Session('w', resolveSpec({ optimizer: 'sparseadam', rule: 'additive', defaults: { lr: 0.01 }, state_dtype: d }), [
          { id: 'e', name: 'e', shape: [ROWS, LEN], group: '', values: Float32Array.from(theta0()) },
        ]);
      const a = make(dtype);
      const b = make('float32');
      try {
        for (let t = 1; t <= 5; t++) {
          const rows = touched(t);
          const g = { id: 'e', data: Float32Array.from(gradient(theta0(), rows, t)), rows: Uint32Array.from(rows) };
          assert.deepEqual(Array.from(a.step(t, [g]).values[0].data), Array.from(b.step(t, [g]).values[0].data));
        }
      } finally {
        a.dispose();
        b.dispose();
      }
    });
    it(`${dtype}: a row step gives the same bits on one thread and two (a [300000, 3] table, rows split over the pool)`, function () {
      const addon = loadNative();
      if (!addon || !currentEngine().storedStateDtypes.includes(dtype)) this.skip();
      const R = 300_000;
      const run = (threads: number) => {
        addon.setThreads(threads);
        const spec = resolveSpec({ optimizer: 'sparseadam', rule: 'additive', defaults: { lr: 0.01 }, state_dtype: dtype, state_seed: 3 });
        const session = new Session('t', spec, [
          { id: 'e', name: 'e', shape: [R, 3], group: '', values: Float32Array.from({ length: 3 * R }, (_, i) => Math.sin(i)) },
        ]);
        try {
          for (let t = 1; t <= 3; t++) {
            const rows = Uint32Array.from({ length: R }, (_, r) => r).filter((r) => (r + t) % 3 !== 0);
            session.step(t, [{ id: 'e', data: Float32Array.from({ length: 3 * rows.length }, (_, i) => Math.cos(0.01 * i + t)), rows }]);
          }
          return Buffer.concat([...session.exportTensors()].map((x) => Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength)));
        } finally {
          session.dispose();
          addon.setThreads(0);
        }
      };
      assert.ok(run(1).equals(run(2)), 'two threads give what one gives');
    });
  }
});
