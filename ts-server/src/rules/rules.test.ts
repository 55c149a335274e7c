// The properties docs/update-rules.md states for the rules, on random data.
// Each rule runs through a real Session on the engine under test, behind plain
// SGD (no momentum, no decay), whose direction is the gradient itself: d = g.
import { strict as assert } from 'assert';
import { resolveGroup, resolveSpec, withOverrides } from '../registry';
import { Session } from '../session/session';

interface Rates {
  eta: number;
  etaIn: number;
  etaOut: number;
  gamma: number;
}

/** A small deterministic generator (LCG) so failures reproduce. */
function rand(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (1664525 * s + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
}

const HYPERS: Record<string, (r: Rates) => Record<string, number>> = {
  additive: () => ({}),
  multiplicative: (r) => ({ lr_in: r.etaIn, lr_out: r.etaOut }),
  hybrid: (r) => ({ lr_in: r.etaIn, lr_out: r.etaOut, gamma: r.gamma }),
  exp_sign: () => ({}),
};

/** One step of `rule` on theta with direction d. */
function apply(rule: string, theta: number[], d: number[], rates: Rates, h: Record<string, number> = {}): number[] {
  const defaults = { lr: rates.eta, ...HYPERS[rule](rates), ...h };
  const s = new Session('rules', resolveSpec({ optimizer: 'sgd', rule, defaults }), [
    { id: 'w', name: 'w', shape: [theta.length], group: '', values: Float32Array.from(theta) },
  ]);
  try {
    return Array.from(s.step(1, [{ id: 'w', data: Float32Array.from(d) }]).values[0].data);
  } finally {
    s.dispose();
  }
}

const N = 2000;
const r = rand(7);
const theta = Array.from({ length: N }, (_, i) => (i % 50 === 0 ? 0 : r() * 3));
const d = Array.from({ length: N }, () => r() * 20);
const rates: Rates = { eta: 0.1, etaIn: 0.7, etaOut: 0.9, gamma: 0.5 };

describe('rules: properties of docs/update-rules.md', () => {
  it('multiplicative: no sign change while eta_out < 1, and |step| <= eta_out |theta|', () => {
    const out = apply('multiplicative', theta, d, rates);
    theta.forEach((t, i) => {
      assert.ok(out[i] * t >= 0, `element ${i}: ${t} -> ${out[i]}`);
      assert.ok(Math.abs(out[i] - t) <= rates.etaOut * Math.abs(t) * (1 + 1e-6), `element ${i}: step too large`);
    });
  });

  it('multiplicative: a weight at exactly zero stays zero over many steps', () => {
    let x = [0, 0, 0];
    for (let k = 0; k < 20; k++) x = apply('multiplicative', x, [5, -3, 0.1], rates);
    assert.deepEqual(x, [0, 0, 0]);
  });

  it('hybrid: gamma = 0 is additive, gamma = 1 is multiplicative', () => {
    const h0 = apply('hybrid', theta, d, { ...rates, gamma: 0 });
    const a = apply('additive', theta, d, rates);
    const h1 = apply('hybrid', theta, d, { ...rates, gamma: 1 });
    const m = apply('multiplicative', theta, d, rates);
    // Same float32 ops in the same order up to the 0 * term: equal to rounding.
    h0.forEach((v, i) => assert.ok(Math.abs(v - a[i]) <= 1e-6 * (1 + Math.abs(a[i])), `gamma=0 element ${i}`));
    h1.forEach((v, i) => assert.ok(Math.abs(v - m[i]) <= 1e-6 * (1 + Math.abs(m[i])), `gamma=1 element ${i}`));
  });

  it('hybrid: the additive part moves a weight off zero', () => {
    const out = apply('hybrid', [0], [1], rates);
    assert.ok(Math.abs(out[0] + (1 - rates.gamma) * rates.eta) < 1e-7, `got ${out[0]}`);
  });

  it('exp_sign: keeps signs and stays within p_scale * rms(theta_0)', () => {
    const rms = Math.sqrt(theta.reduce((a, v) => a + v * v, 0) / N);
    const out = apply('exp_sign', theta, d, { ...rates, eta: 0.5 }, { p_scale: 1.5 });
    out.forEach((v, i) => {
      assert.ok(v * theta[i] >= 0, `element ${i} changed sign`);
      assert.ok(Math.abs(v) <= 1.5 * rms * (1 + 1e-6), `element ${i}: ${v} outside the bound`);
    });
  });

  it('exp_sign: clamps d to g_bound', () => {
    const big = apply('exp_sign', [1], [1e6], { ...rates, eta: 0.01 }, { g_bound: 2 });
    assert.ok(Math.abs(big[0] - Math.exp(-0.02)) < 1e-6, `got ${big[0]}`);
  });

  it('defaults: hybrid gamma 0.9 and lr_out = 10 x lr, following an overridden lr', () => {
    const spec = resolveSpec({ optimizer: 'adam', rule: 'hybrid' });
    const h = resolveGroup(spec, '');
    assert.equal(h.gamma, 0.9);
    assert.equal(h.lr_in, 1);
    assert.equal(h.lr_out, 10 * (h.lr as number));
    // A scheduler's lr reaches lr_out too, unless lr_out itself is given.
    const next = withOverrides(spec, { '': { lr: 0.02 } }, ['']);
    assert.equal(resolveGroup(next, '').lr_out, 0.2);
    const pinned = withOverrides(spec, { '': { lr: 0.02, lr_out: 0.005 } }, ['']);
    assert.equal(resolveGroup(pinned, '').lr_out, 0.005);
    assert.equal(resolveGroup(resolveSpec({ optimizer: 'sgd', rule: 'multiplicative', defaults: { lr: 0.1 } }), '').lr_out, 1);
  });

  it('defaults: a step under the default hybrid is the 0.9 / 0.1 mixture', () => {
    // Plain SGD, lr 0.01: lr_out defaults to 0.1, gamma to 0.9.
    const th = [0.5, -2, 0];
    const dd = [1, 0.3, -4];
    const s = new Session('rules', resolveSpec({ optimizer: 'sgd', rule: 'hybrid', defaults: { lr: 0.01 } }), [
      { id: 'w', name: 'w', shape: [3], group: '', values: Float32Array.from(th) },
    ]);
    try {
      const out = Array.from(s.step(1, [{ id: 'w', data: Float32Array.from(dd) }]).values[0].data);
      out.forEach((v, i) => {
        const want = th[i] - (0.9 * 0.1 * Math.abs(th[i]) * Math.tanh(dd[i]) + 0.1 * 0.01 * dd[i]);
        assert.ok(Math.abs(v - want) < 1e-6, `element ${i}: ${v} vs ${want}`);
      });
    } finally {
      s.dispose();
    }
  });
});
