// Properties docs/update-rules.md states for Adafactor's split, through a real
// Session on the engine under test (checked here without the reference).
import { strict as assert } from 'assert';
import { trajectory } from '../../test/harness';

const f32 = (x: number[]) => Array.from(Float32Array.from(x));
/*
 * The steps below are read as differences of float32 thetas of size ~1: one
 * ulp (1.2e-7) of theta is ~1e-5 of a step of ~1e-2, so steps are compared to
 * 5e-5 relative; a wrong clip, schedule or decay is off by 10% or more.
 */
const REL = 5e-5;
const rms = (x: number[]) => Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);

/** Runs `grads` through one parameter of `shape`; theta after each step, and the final slots. */
const run = (rule: string, defaults: Record<string, unknown>, shape: number[], theta0: number[], grads: number[][]) =>
  trajectory('adafactor', rule, defaults, shape, theta0, grads);

describe('adafactor: factored state, the RMS clip and the relative step', () => {
  it('a matrix keeps R + C numbers (row and column means of g^2 at t = 1), a vector keeps n', () => {
    const g = [1, 2, 3, 4, 5, 6];
    const m = run('additive', {}, [2, 3], [1, 1, 1, 1, 1, 1], [g]).slots;
    assert.deepEqual(Object.keys(m).sort(), ['', 'col_var', 'row_var']);
    // t^tau = 1 at t = 1: the means themselves (in float32).
    assert.deepEqual(m.row_var, f32([(1 + 4 + 9) / 3, (16 + 25 + 36) / 3]));
    assert.deepEqual(m.col_var, f32([(1 + 16) / 2, (4 + 25) / 2, (9 + 36) / 2]));
    const v = run('additive', {}, [6], [1, 1, 1, 1, 1, 1], [g]).slots;
    assert.deepEqual(Object.keys(v).sort(), ['', 'variance']);
    assert.deepEqual(
      v.variance,
      g.map((x) => x * x),
    );
  });

  it('additive: the step is rho max(eps2, rms(theta)) u, clipped to RMS d (u = g / sqrt(v))', () => {
    // Step 2 of a vector: v = lerp(1e-4, 1, 2^-0.8), u = 1 / sqrt(v) = 1.32 > d = 1: clipped to 1.
    const theta0 = [0.5, -2];
    const grads = [
      [0.01, 0.01],
      [1, 1],
    ];
    const lr = 0.01;
    const v = 1e-4 + 2 ** -0.8 * (1 - 1e-4);
    for (const d of [1, 2]) {
      const { thetas } = run('additive', { lr, d }, [2], theta0, grads);
      const step = thetas[0].map((x, i) => x - thetas[1][i]);
      const want = Math.min(lr, 1 / Math.sqrt(2)) * rms(thetas[0]) * Math.min(1 / Math.sqrt(v), d);
      step.forEach((s) => assert.ok(Math.abs(s - want) <= REL * want, `d = ${d}: step ${s}, want ${want}`));
    }
  });

  it('multiplicative: the relative step min(lr, 1/sqrt(t)) / lr scales eta_out (tanh saturated)', () => {
    // lr 0.5 > 1/sqrt(t) from t = 5: the bound lr_out * scale shrinks as 1/sqrt(t).
    const grads = Array.from({ length: 9 }, () => [1, -1, 1]);
    const { thetas } = run('multiplicative', { lr: 0.5, lr_in: 1e6, lr_out: 0.02 }, [3], [1, -2, 0], grads);
    let before = [1, -2, 0];
    thetas.forEach((th, k) => {
      const t = k + 1;
      const want = (0.02 * Math.min(0.5, 1 / Math.sqrt(t))) / 0.5;
      for (const i of [0, 1]) {
        const frac = Math.abs(before[i] - th[i]) / Math.abs(before[i]);
        assert.ok(Math.abs(frac - want) <= REL * want, `t ${t}: relative step ${frac}, want ${want}`);
      }
      assert.equal(th[2], 0, 'zero stays zero');
      before = th;
    });
  });

  it('weight decay is decoupled: 1 - lr wd on theta, before the rule; rms(theta) is taken before it', () => {
    const lr = 0.01;
    const theta0 = [0.5, -2];
    const plain = run('additive', { lr }, [2], theta0, [[0.3, 0.3]]).thetas[0];
    const decayed = run('additive', { lr, weight_decay: 0.5 }, [2], theta0, [[0.3, 0.3]]).thetas[0];
    // The step is the same (u = sign(g) at t = 1, rms(theta_0) either way); only x differs.
    decayed.forEach((x, i) => assert.ok(Math.abs(x - (plain[i] - lr * 0.5 * theta0[i])) < 1e-6, `element ${i}`));
  });
});
