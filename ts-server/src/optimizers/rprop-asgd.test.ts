// Properties docs/update-rules.md states for Rprop's and ASGD's split, through
// a real Session on the engine under test (checked here without the reference).
import { strict as assert } from 'assert';
import { trajectory } from '../../test/harness';

const RULE_HYPERS: Record<string, Record<string, number>> = {
  additive: {},
  multiplicative: { lr_in: 1, lr_out: 0.05 },
  hybrid: { lr_in: 1, lr_out: 0.05, gamma: 0.5 },
  exp_sign: {},
};

/** Runs `grads` through one parameter; every theta after each step, and the final optimizer slots. */
const run = (optimizer: string, rule: string, defaults: Record<string, unknown>, theta0: number[], grads: number[][]) =>
  trajectory(optimizer, rule, { ...RULE_HYPERS[rule], ...defaults }, [theta0.length], theta0, grads);

describe("rprop: the split d = sign(g') step_size / lr", () => {
  for (const rule of Object.keys(RULE_HYPERS)) {
    it(`${rule}: an element whose gradient just changed sign does not move; the others do`, () => {
      const { thetas } = run(
        'rprop',
        rule,
        { lr: 0.01 },
        [0.5, -0.4],
        [
          [1, 1],
          [-1, 2],
        ],
      );
      assert.equal(thetas[1][0], thetas[0][0], 'the flipped element waits one step');
      assert.notEqual(thetas[1][1], thetas[0][1]);
    });
  }

  it('multiplicative: under a gradient of steady sign the relative step grows toward eta_out, never past it', () => {
    const grads = Array.from({ length: 12 }, () => [1]);
    const { thetas } = run('rprop', 'multiplicative', { lr: 0.01 }, [2], grads);
    let before = 2;
    let last = 0;
    for (const [x] of thetas) {
      const frac = (before - x) / before;
      assert.ok(frac > last && frac <= 0.05 * (1 + 1e-6), `relative step ${frac} after ${last}`);
      [last, before] = [frac, x];
    }
    assert.ok(last > 0.049, `tanh saturates: the last relative step is ${last}`);
  });
});

describe('asgd: the average ax', () => {
  for (const rule of Object.keys(RULE_HYPERS)) {
    it(`${rule}: with t0 = 0, ax is the mean of theta_2 .. theta_t (mu = 1 / (t - 1))`, () => {
      const grads = Array.from({ length: 9 }, (_, k) => [Math.cos(k), 0.3 - 0.1 * k]);
      const { thetas, slots } = run('asgd', rule, { lr: 0.05, t0: 0, lambd: 0.01 }, [0.8, -0.6], grads);
      const tail = thetas.slice(1);
      [0, 1].forEach((i) => {
        const mean = tail.reduce((a, th) => a + th[i], 0) / tail.length;
        assert.ok(Math.abs(slots.ax[i] - mean) <= 1e-6, `ax[${i}] = ${slots.ax[i]}, mean ${mean}`);
      });
      assert.ok(Math.abs(slots.mu[0] - 1 / 9) < 1e-7, `mu = 1 / max(1, t - t0) = ${slots.mu[0]}`);
    });
  }

  it('additive: eta decays as lr / (1 + lambd lr t)^alpha and the step follows it', () => {
    const { thetas, slots } = run('asgd', 'additive', { lr: 0.1, lambd: 0.5, alpha: 0.75 }, [0], [[1], [1], [1]]);
    const eta = (t: number) => 0.1 / (1 + 0.5 * 0.1 * t) ** 0.75;
    // theta_t = (1 - lambd eta_{t-1}) theta_{t-1} - eta_{t-1} g, eta_0 = lr
    let th = 0;
    [0.1, eta(1), eta(2)].forEach((e, k) => {
      th = (1 - 0.5 * e) * th - e;
      assert.ok(Math.abs(thetas[k][0] - th) <= 1e-6, `step ${k + 1}: ${thetas[k][0]} vs ${th}`);
    });
    assert.ok(Math.abs(slots.eta[0] - eta(3)) <= 1e-8);
  });
});
