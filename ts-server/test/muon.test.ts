// Muon beyond the engine table's one wide 3 x 5 matrix: tall matrices (torch
// transposes them for Newton-Schulz and back), a column and a row, against
// the float64 reference on the current engine; the native engine's matrix
// pass gives the same bits on one and two threads (products cut into fixed
// row blocks, newton_schulz.cc) and whatever the buffers' alignment; shapes
// and hyperparameters Muon cannot take are refused by name, before a session
// exists.
import { strict as assert } from 'assert';
import { loadNative, NativeEngine } from '../src/engine/native';
import { InvalidArgument } from '../src/errors';
import { OPTIMIZERS } from '../src/optimizers';
import { resolveGroup, resolveSpec } from '../src/registry';
import { RULES } from '../src/rules';
import { Session } from '../src/session/session';
import { refStep, type H, type RefState } from './reference/reference';

/** A deterministic generator (LCG) so failures reproduce. */
function randomArray(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => (((s = (1664525 * s + 1013904223) >>> 0) / 2 ** 32) * 2 - 1) * scale);
}
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/*
 * Tolerance: Newton-Schulz amplifies rounding. Its first step multiplies the
 * small singular values by a = 3.4445, so a float32 rounding (u = 6e-8) of X
 * grows by up to a^5 ~ 500 over five steps: ~3e-5 relative in NS(u), whose
 * entries are below 1. theta moves by lr * adjust * NS(u) per step (lr 0.02,
 * adjust <= 2.7 here), so 30 steps add at most 30 * 0.054 * 3e-5 = 5e-5; a
 * missing transposition, a wrong adjustment or a skipped step moves theta by
 * 1e-3 or more (checked by dropping the transposition in muon.ts: every tall
 * row fails).
 */
const ATOL = 1e-4;

describe('muon: tall, column and row matrices vs the float64 reference', () => {
  for (const [shape, rule, hypers] of [
    [[7, 4], 'additive', { lr: 0.02 }],
    [[7, 4], 'hybrid', { lr: 0.02, lr_out: 0.05, gamma: 0.6, nesterov: false }],
    [[6, 1], 'additive', { lr: 0.02, adjust_lr_fn: 'spectral_unclamped' }],
    [[1, 6], 'multiplicative', { lr: 0.02, lr_out: 0.05, adjust_lr_fn: 'match_rms_adamw' }],
    [[9, 2], 'exp_sign', { lr: 0.02, weight_decay: 0.5, ns_steps: 7 }],
  ] as const) {
    it(`${JSON.stringify(shape)} x ${rule} ${JSON.stringify(hypers)}`, () => {
      const spec = resolveSpec({ optimizer: 'muon', rule, defaults: hypers });
      const h = resolveGroup(spec, '') as H;
      const n = size([...shape]);
      const start = randomArray(n, 7);
      const session = new Session('muon', spec, [{ id: 'w', name: 'w', shape: [...shape], group: '', values: start }]);
      let ref = Array.from(start);
      const s: RefState = {};
      const rs: RefState = {};
      try {
        for (let t = 1; t <= 30; t++) {
          const g = Float32Array.from(ref, (v, i) => 0.6 * Math.cos(0.7 * i + 0.3 * t) + 0.4 * v);
          const out = session.step(t, [{ id: 'w', data: g }]).values[0].data;
          ref = refStep('muon', rule, ref, Array.from(g), s, rs, h, t, [...shape]);
          ref.forEach((v, i) => assert.ok(Math.abs(out[i] - v) <= ATOL, `step ${t} element ${i}: engine ${out[i]} vs reference ${v}`));
        }
        assert.ok(Math.max(...ref.map((v, i) => Math.abs(v - start[i]))) > 1e-2, 'theta barely moved');
      } finally {
        session.dispose();
      }
    });
  }
});

describe("muon under the rules: docs/update-rules.md's properties hold for its orthogonalised direction", () => {
  it('multiplicative (eta_out scale < 1): no weight changes sign, |step| <= eta_out scale |theta|, 40 random steps', () => {
    const shape = [7, 4]; // tall: scale sqrt(7 / 4) = 1.32, eta_out 0.5: 0.66 < 1
    const scale = Math.sqrt(7 / 4);
    const spec = resolveSpec({ optimizer: 'muon', rule: 'multiplicative', defaults: { lr: 0.02, lr_out: 0.5, lr_in: 3, weight_decay: 0 } });
    const s = new Session('props', spec, [{ id: 'w', name: 'w', shape, group: '', values: randomArray(28, 3) }]);
    try {
      let prev = randomArray(28, 3);
      for (let t = 1; t <= 40; t++) {
        const next = s.step(t, [{ id: 'w', data: randomArray(28, 100 + t, 2) }]).values[0].data.slice();
        next.forEach((v, i) => {
          assert.ok(Math.sign(v) === Math.sign(prev[i]) || prev[i] === 0, `step ${t} element ${i} changed sign`);
          // float32: the step's own rounding, a few ulp of |theta|
          assert.ok(
            Math.abs(v - prev[i]) <= 0.5 * scale * Math.abs(prev[i]) * (1 + 1e-6) + 1e-7,
            `step ${t} element ${i}: |step| too large`,
          );
        });
        prev = next;
      }
    } finally {
      s.dispose();
    }
  });
  it('exp_sign: |theta| stays within its bound p_scale rms(theta_0)', () => {
    const start = randomArray(28, 5);
    const bound = 3 * Math.sqrt(start.reduce((a, v) => a + v * v, 0) / 28);
    const spec = resolveSpec({ optimizer: 'muon', rule: 'exp_sign', defaults: { lr: 0.5, weight_decay: 0 } });
    const s = new Session('props', spec, [{ id: 'w', name: 'w', shape: [4, 7], group: '', values: start }]);
    try {
      for (let t = 1; t <= 40; t++) {
        const out = s.step(t, [{ id: 'w', data: randomArray(28, 200 + t, 2) }]).values[0].data;
        out.forEach((v, i) => assert.ok(Math.abs(v) <= bound * (1 + 1e-6), `step ${t} element ${i}: |${v}| > ${bound}`));
      }
    } finally {
      s.dispose();
    }
  });
});

describe('muon: refusals by name, before a session exists', () => {
  const make = (shape: number[], defaults: Record<string, unknown> = {}) =>
    new Session('muon', resolveSpec({ optimizer: 'muon', rule: 'additive', defaults }), [
      { id: 'w', name: 'fc.weight', shape: [4, 4], group: '', values: new Float32Array(16).fill(0.5) },
      { id: 'b', name: 'fc.bias', shape, group: '', values: new Float32Array(size(shape)).fill(0.1) },
    ]);
  for (const shape of [[4], [2, 2, 2], [], [0, 3]]) {
    it(`a parameter of shape ${JSON.stringify(shape)} is refused naming it`, () => {
      assert.throws(
        () => make(shape),
        (e: Error) => e instanceof InvalidArgument && e.message.includes("'fc.bias'") && e.message.includes('muon'),
      );
    });
  }
  for (const [defaults, words] of [
    [{ ns_steps: 100 }, ['ns_steps', '100']],
    [{ ns_steps: 2.5 }, ['ns_steps', '2.5']],
    [{ ns_coefficients: [3, -4] }, ['ns_coefficients']],
    [{ adjust_lr_fn: 'rms' }, ['adjust_lr_fn', '"rms"', 'original']],
    [{ momentum: -0.1 }, ['momentum']],
    [{ betas: [0.9, 0.99] }, ['betas']],
  ] as const) {
    it(`${JSON.stringify(defaults)} is refused naming ${words[0]}`, () => {
      assert.throws(
        () => make([3, 3], defaults),
        (e: Error) => e instanceof InvalidArgument && words.every((w) => e.message.includes(w)),
      );
    });
  }
  it('AddParameters with a 1-D parameter is refused by name and leaves the session as it was', () => {
    const s = new Session('muon', resolveSpec({ optimizer: 'muon', rule: 'additive' }), [
      { id: 'w', name: 'fc.weight', shape: [4, 4], group: '', values: new Float32Array(16).fill(0.5) },
    ]);
    try {
      const before = [...s.exportTensors()].map((t) => `${t.paramId}:${t.slot}:${Array.from(t.data).join(',')}`);
      assert.throws(
        () => s.addParameters({}, [{ id: 'b', name: 'fc.bias', shape: [4], group: '', values: new Float32Array(4) }]),
        (e: Error) => e instanceof InvalidArgument && e.message.includes("'fc.bias'"),
      );
      assert.deepEqual(
        [...s.exportTensors()].map((t) => `${t.paramId}:${t.slot}:${Array.from(t.data).join(',')}`),
        before,
      );
    } finally {
      s.dispose();
    }
  });
  it("torch's adjust_lr_fn=None is accepted as its default ('original')", () => {
    assert.equal(
      resolveGroup(resolveSpec({ optimizer: 'muon', rule: 'additive', defaults: { adjust_lr_fn: null } }), '').adjust_lr_fn,
      'original',
    );
  });
});

describe('muon on the native engine: the same bits on 1 and 2 threads and at any alignment', function () {
  const addon = loadNative();
  before(function () {
    if (!addon) this.skip(); // native-engine.test.ts fails when the addon is expected and missing
  });
  it('matrices of several row blocks (tall, wide, square) after 3 steps', () => {
    const shapes = [
      [600, 300],
      [200, 700],
      [257, 257],
      [3, 5],
    ];
    const run = (threads: number, shift: number) => {
      const engine = new NativeEngine(addon!, OPTIMIZERS, RULES);
      engine.setThreads(threads);
      // Each gradient sits `shift` floats into its own buffer, so its alignment differs per run.
      const at = (a: Float32Array) => {
        const b = new Float32Array(a.length + shift);
        b.set(a, shift);
        return b.subarray(shift);
      };
      const decls = shapes.map((shape, i) => ({ id: `p${i}`, name: `p${i}`, shape, group: '', values: randomArray(size(shape), i + 1) }));
      const s = new Session('threads', resolveSpec({ optimizer: 'muon', rule: 'hybrid', defaults: { lr: 0.02 } }), decls, engine);
      try {
        let out: Float32Array[] = [];
        for (let t = 1; t <= 3; t++) {
          const grads = decls.map((d, i) => ({ id: d.id, data: at(randomArray(d.values.length, 1000 * t + i, 0.1)) }));
          out = s.step(t, grads).values.map((v) => v.data.slice());
        }
        return out;
      } finally {
        s.dispose();
        engine.setThreads(0);
      }
    };
    const one = run(1, 0);
    for (const [threads, shift] of [
      [2, 0],
      [2, 3],
      [1, 1],
    ]) {
      run(threads, shift).forEach((a, i) =>
        assert.ok(Buffer.from(a.buffer).equals(Buffer.from(one[i].buffer)), `tensor ${i} differs (${threads} threads, shift ${shift})`),
      );
    }
    assert.ok(
      one.every((a, i) => a.some((v, k) => v !== randomArray(a.length, i + 1)[k])),
      'every tensor moved',
    );
  });
});
