// Properties docs/update-rules.md states for Schedule-Free AdamW (the rule acts
// on z, theta is y, x is derived), through a real Session on the engine under
// test (checked here without the reference).
import { strict as assert } from 'assert';
import { trajectory } from '../../test/harness';
import { resolveSpec } from '../registry';

/** `grads` through one vector parameter: y after each step, z after each step, and the final slots. */
function run(rule: string, defaults: Record<string, unknown>, theta0: number[], grads: number[][]) {
  const r = trajectory('schedule_free_adamw', rule, defaults, [theta0.length], theta0, grads, true);
  return { ys: r.thetas, zs: r.history.map((h) => h.z), slots: r.slots };
}

const close = (a: number, b: number, tol = 1e-6) => Math.abs(a - b) <= tol * (1 + Math.abs(b));

describe('schedule_free_adamw: z, y and the averaging weights', () => {
  it('keeps z, exp_avg_sq and the scalars weight_sum and max_lr; step 1 puts y on z (c = 1)', () => {
    const lr = 0.01;
    const { ys, slots } = run('additive', { lr }, [0.5, -2, 1], [[0.3, -0.2, 0.1]]);
    assert.deepEqual(Object.keys(slots).sort(), ['', 'exp_avg_sq', 'max_lr', 'weight_sum', 'z']);
    // t = 1: v / bc2 = g^2, d = g / (|g| + eps) = sign(g) to 1e-7; c = lr^2 / lr^2 = 1, so x = z and y = z.
    const want = [0.5 - lr, -2 + lr, 1 - lr];
    want.forEach((w, i) => {
      assert.ok(close(slots.z[i], w), `z[${i}] = ${slots.z[i]}, want ${w}`);
      assert.ok(close(ys[0][i], slots.z[i]), `y[${i}] = ${ys[0][i]} is not z`);
    });
    assert.ok(close(slots.max_lr[0], lr) && close(slots.weight_sum[0], lr * lr));
  });

  it('at a constant lr the weights are 1/t: x is the running mean of the z iterates', () => {
    const lr = 0.05;
    const b1 = 0.9;
    const grads = Array.from({ length: 6 }, (_, k) => [Math.cos(k), -0.5 + 0.2 * k]);
    const { ys, zs, slots } = run('additive', { lr, weight_lr_power: 2 }, [0.4, -0.3], grads);
    assert.ok(close(slots.weight_sum[0], 6 * lr * lr));
    for (let t = 1; t <= 6; t++) {
      for (let i = 0; i < 2; i++) {
        const x = (ys[t - 1][i] - (1 - b1) * zs[t - 1][i]) / b1;
        const mean = zs.slice(0, t).reduce((a, z) => a + z[i], 0) / t;
        assert.ok(close(x, mean, 1e-5), `t ${t}: x ${x}, mean of z ${mean}`);
      }
    }
  });

  it('warmup: the base step takes warmup(t - 1) (0 at t = 1: z stays), the averaging weight warmup(t)', () => {
    const lr = 0.1;
    const { ys, zs, slots } = run(
      'additive',
      { lr, warmup_steps: 4 },
      [0.5, -2],
      [
        [0.3, 0.3],
        [0.3, 0.3],
      ],
    );
    assert.deepEqual(zs[0], Array.from(Float32Array.of(0.5, -2)), 'z moved at t = 1');
    assert.deepEqual(ys[0], zs[0]);
    // t = 2: z moves by lr warmup(1) = lr / 4 (d = 1 to 1e-7 with the same g twice).
    assert.ok(close(zs[1][0], 0.5 - lr / 4), `z ${zs[1][0]}`);
    // max_lr = lr warmup(2) = lr / 2; weight_sum = (lr/4)^2 + (lr/2)^2.
    assert.ok(close(slots.max_lr[0], lr / 2));
    assert.ok(close(slots.weight_sum[0], (lr / 4) ** 2 + (lr / 2) ** 2));
  });

  it('multiplicative: z never changes sign and 0 stays 0, so neither does y (its averages of z)', () => {
    const grads = Array.from({ length: 30 }, (_, k) => [5 * Math.sin(k), -4, 3, 7 * Math.cos(k)]);
    const theta0 = [0.5, -0.2, 0, 1.5];
    const { ys, zs } = run('multiplicative', { lr: 0.1, lr_in: 10, lr_out: 0.5 }, theta0, grads);
    for (let t = 0; t < 30; t++) {
      theta0.forEach((v, i) => {
        if (v === 0) {
          assert.equal(zs[t][i], 0, 'z: zero stays zero');
          assert.equal(ys[t][i], 0, 'y: zero stays zero');
        } else {
          assert.ok(zs[t][i] * v > 0, `t ${t + 1}: z[${i}] = ${zs[t][i]} changed sign`);
          assert.ok(ys[t][i] * v > 0, `t ${t + 1}: y[${i}] = ${ys[t][i]} changed sign`);
        }
      });
    }
    // The bound moved z: a rule that did nothing would pass trivially.
    assert.ok(Math.abs(zs[29][0] - 0.5) > 0.05);
  });

  it('exp_sign: z stays within the bound p_scale rms(theta_0), and so does y', () => {
    const theta0 = [0.5, -0.2, 0.1, 1.5];
    const B = 3 * Math.sqrt(theta0.reduce((a, v) => a + v * v, 0) / 4);
    const grads = Array.from({ length: 40 }, () => [-10, 10, -10, -10]);
    const { ys, zs, slots } = run('exp_sign', { lr: 0.2 }, theta0, grads);
    assert.ok(close(slots['rule.max'][0], B));
    for (let t = 0; t < 40; t++)
      for (let i = 0; i < 4; i++) {
        assert.ok(Math.abs(zs[t][i]) <= B * (1 + 1e-6), `z ${zs[t][i]} beyond ${B}`);
        assert.ok(Math.abs(ys[t][i]) <= B * (1 + 1e-6), `y ${ys[t][i]} beyond ${B}`);
      }
    assert.ok(close(Math.abs(zs[39][3]), B, 1e-5), 'z reached the bound');
  });

  it('refuses b1 = 0 (x would divide by it), a fractional or negative warmup_steps, by name', () => {
    for (const [defaults, what] of [
      [{ betas: [0, 0.999] }, /betas\[0\]/],
      [{ betas: [0.9, 1] }, /betas\[1\]/],
      [{ warmup_steps: 2.5 }, /warmup_steps/],
      [{ warmup_steps: -1 }, /warmup_steps/],
      [{ weight_lr_power: -1 }, /weight_lr_power/],
      [{ eps: -1 }, /eps/],
    ] as const)
      assert.throws(() => resolveSpec({ optimizer: 'schedule_free_adamw', rule: 'additive', defaults }), what);
  });
});
