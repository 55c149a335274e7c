// The rules' paths for L-BFGS's strong Wolfe line search (lbfgsPath.ts):
// the tangent against central finite differences of the move (the float64
// reference's rule, test/reference/reference.ts, applied as the session's
// mover applies it; and the engine's own float32 move), and the strong Wolfe
// conditions along the path at the step the search accepts.
import { strict as assert } from 'assert';
import { currentEngine, disposeParam } from '../engine/engine';
import type { Hypers } from '../engine/types';
import { resolveGroup, resolveSpec } from '../registry';
import { LbfgsRun, type FlatParam } from '../session/lbfgs';
import { refStep, type H } from '../../test/reference/reference';
import { strongWolfe } from './lbfgsLineSearch';
import { lbfgsStep, newState, type Mover } from './lbfgsStep';
import { lbfgsHypers } from './lbfgs';
import { PATH_RULES, pathRates, pathTangent, type PathRule } from './lbfgsPath';

/** Per rule: its hyperparameters away from the defaults (d clamped by g_bound 0.8, exp_sign's bound reached). */
const SETTINGS: Record<PathRule, Record<string, unknown>> = {
  multiplicative: { lr: 0.5, lr_out: 0.7, lr_in: 2 },
  hybrid: { lr: 0.5, lr_out: 0.7, lr_in: 2, gamma: 0.3 },
  exp_sign: { lr: 0.5, g_bound: 0.8, p_scale: 1.5 },
};
const groupOf = (rule: string, defaults: Record<string, unknown>) =>
  resolveGroup(resolveSpec({ optimizer: 'lbfgs', rule, defaults: { ...defaults, line_search_fn: 'strong_wolfe' } }), '');

/**
 * The session's move in float64: the reference's rule, as one SGD step of
 * gradient -d, lr t and lr_out lr_out t / lr (session/lbfgs.ts). `bound`:
 * exp_sign's B (else the reference takes it from x0, as the engine does).
 */
function refMove(rule: string, h: Hypers, x0: number[], t: number, d: number[], bound?: number): number[] {
  const lr = h.lr as number;
  const defaults: Record<string, unknown> = { lr: t };
  for (const k of ['lr_in', 'gamma', 'g_bound', 'p_scale']) if (k in h) defaults[k] = h[k];
  if (typeof h.lr_out === 'number') defaults.lr_out = h.lr_out * (lr > 0 ? t / lr : 0);
  const sh = resolveGroup(resolveSpec({ optimizer: 'sgd', rule, defaults }), '') as H;
  return refStep(
    'sgd',
    rule,
    x0,
    d.map((v) => -v),
    {},
    bound === undefined ? {} : { bound: [bound] },
    sh,
    1,
  );
}

const X0 = [0.9, -1.3, 0.05, 0, 2.1, -0.4, 1.6, -2.2];
const D = [0.3, 1.7, -0.9, 0.5, -2.4, 0.1, 1.1, -0.6];
const rms = (x: number[]) => Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);

describe('lbfgs paths: the tangent is the derivative of the move', () => {
  for (const rule of PATH_RULES) {
    it(`${rule}: x'(t) against central differences of the float64 move`, () => {
      const h = groupOf(rule, SETTINGS[rule]);
      const B = (h.p_scale as number) * rms(X0);
      let clamped = 0;
      let free = 0;
      for (const t of [0.05, 0.3, 1, 2.5]) {
        const tan = new Float64Array(X0.length);
        pathTangent(rule, pathRates(h), X0, t, D, B, tan);
        // Float64 central differences: truncation e^2/6 |x'''| <= 1e-12 (1.7e-12 |x| <= 4e-12 for exp_sign;
        // the other paths are straight), rounding ~ ulp(|x| <= 3) / e = 7e-10; 1e-8 is ten times both.
        const e = 1e-6;
        const up = refMove(rule, h, X0, t + e, D, B);
        const down = refMove(rule, h, X0, t - e, D, B);
        tan.forEach((v, i) => {
          // exp_sign's kink: skip an element whose bound is reached inside [t - e, t + e] (none here, counted).
          if (rule === 'exp_sign' && Math.abs(up[i]) >= B !== Math.abs(down[i]) >= B) return;
          if (rule === 'exp_sign' && Math.abs(up[i]) >= B) clamped++;
          else if (rule === 'exp_sign') free++;
          const fd = (up[i] - down[i]) / (2 * e);
          assert.ok(Math.abs(v - fd) <= 1e-8, `t ${t} element ${i}: tangent ${v}, difference ${fd}`);
        });
      }
      if (rule === 'exp_sign') assert.ok(clamped > 0 && free > clamped, `clamped ${clamped}, free ${free}: both cases tested`);
    });
  }

  it('exp_sign at its bound: the derivative from the right (0 going outward, c |u| going inward)', () => {
    const h = groupOf('exp_sign', SETTINGS.exp_sign);
    const tan = new Float64Array(2);
    // |x0| = B exactly at t = 0: +1 grows outward (sign(x0) c > 0), -1 shrinks inward.
    pathTangent('exp_sign', pathRates(h), [1, 1], 0, [0.5, -0.5], 1, tan);
    assert.deepEqual(Array.from(tan), [0, -0.5]);
  });

  it('the additive rule has no tangent: its line search is the straight one, x + t d', () => {
    const run = new LbfgsRun(currentEngine(), () => []);
    const spec = resolveSpec({ optimizer: 'lbfgs', rule: 'additive', defaults: { line_search_fn: 'strong_wolfe' } });
    const m = run.mover(spec, groupOf('additive', {}));
    assert.equal(m.exact, true);
    assert.equal('tangent' in m, false);
  });
});

/** Two parameters on the engine under test (per-parameter slices and exp_sign bounds), disposed by `free`. */
function engineParams(x0: number[]): { params: FlatParam[]; free: () => void } {
  const engine = currentEngine();
  const cut = 3;
  const params = [x0.slice(0, cut), x0.slice(cut)].map((v, i) => ({
    id: `p${i}`,
    group: '',
    size: v.length,
    shape: [v.length],
    state: { theta: engine.create(Float32Array.from(v), [v.length]), opt: new Map(), rule: new Map(), steps: 0 },
  }));
  return { params, free: () => params.forEach((p) => disposeParam(engine, p.state)) };
}

describe("lbfgs paths: the engine's move and its tangent", () => {
  for (const rule of PATH_RULES) {
    it(`${rule}: the engine moves along the float64 path; its tangent is that path's`, () => {
      const { params, free } = engineParams(X0);
      try {
        const run = new LbfgsRun(currentEngine(), () => params);
        const h = groupOf(rule, SETTINGS[rule]);
        const spec = resolveSpec({ optimizer: 'lbfgs', rule, defaults: { ...SETTINGS[rule], line_search_fn: 'strong_wolfe' } });
        const m = run.mover(spec, h);
        const x0 = Float32Array.from(X0);
        const d = Float32Array.from(D);
        // Before the first move (exp_sign's bound not stored yet) and after it: the same tangent at t = 0.
        const before = m.tangent!(x0, 0, d);
        m.move(x0, 0.3, d);
        assert.deepEqual(m.tangent!(x0, 0, d), before);
        const x0s = [X0.slice(0, 3), X0.slice(3)];
        const ds = [D.slice(0, 3), D.slice(3)];
        const e = 1e-3;
        for (const t of [0.05, 0.3, 1]) {
          const got = m.move(x0, t, d);
          const want = x0s.flatMap((x, k) => refMove(rule, h, x, t, ds[k]));
          // float32 against float64: a few ulps of |x| <= 3 (exp, tanh, the products in float32); 1e-6 is ~4 ulps.
          want.forEach((v, i) =>
            assert.ok(Math.abs(got[i] - v) <= 1e-6 * Math.max(1, Math.abs(v)), `t ${t} element ${i}: ${got[i]} vs ${v}`),
          );
          const tan = m.tangent!(x0, t, d);
          const up = m.move(x0, t + e, d);
          const down = m.move(x0, t - e, d);
          const bounds = params.map((p) => p.state.rule.get('max')?.view()[0] ?? 0);
          tan.forEach((v, i) => {
            const B = bounds[i < 3 ? 0 : 1];
            if (rule === 'exp_sign' && Math.abs(up[i]) >= B !== Math.abs(down[i]) >= B) return;
            // Differences of float32 points: their rounding, ~4 ulps of |x| <= 3 (1e-6) over 2e = 2e-3, is
            // 5e-4; exp_sign's truncation e^2/6 |x'''| is 2e-7. 1e-3 is twice that; a wrong factor (gamma,
            // lr_out / lr, the clamp) is off by 0.1 or more on these elements.
            const fd = (up[i] - down[i]) / (2 * e);
            assert.ok(Math.abs(v - fd) <= 1e-3, `t ${t} element ${i}: tangent ${v}, difference ${fd}`);
          });
        }
      } finally {
        free();
      }
    });
  }
});

/** A smooth test function: a 2-D Rosenbrock valley in each pair of elements, scaled (b = 10), and its gradient. */
function rosenbrock(x: ArrayLike<number>): { loss: number; grad: Float32Array } {
  let loss = 0;
  const g = new Float32Array(x.length);
  for (let i = 0; i + 1 < x.length; i += 2) {
    const [a, b] = [x[i], x[i + 1]];
    loss += (1 - a) ** 2 + 10 * (b - a * a) ** 2;
    g[i] = -2 * (1 - a) - 40 * a * (b - a * a);
    g[i + 1] = 20 * (b - a * a);
  }
  return { loss, grad: g };
}
/** A convex quadratic, sum_i (i + 1) (x_i - 0.5)^2 / 2. */
function quadratic(x: ArrayLike<number>): { loss: number; grad: Float32Array } {
  let loss = 0;
  const g = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    loss += ((i + 1) * (x[i] - 0.5) ** 2) / 2;
    g[i] = (i + 1) * (x[i] - 0.5);
  }
  return { loss, grad: g };
}
const dot64 = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};

describe('lbfgs paths: the strong Wolfe conditions along the path', () => {
  const c1 = 1e-4;
  const c2 = 0.9;
  for (const rule of PATH_RULES) {
    it(`${rule}: an accepted step satisfies both conditions, with phi'(t) = g(x(t)).x'(t) in float64`, () => {
      const h = groupOf(rule, SETTINGS[rule]);
      const rates = pathRates(h);
      let accepted = 0;
      let cases = 0;
      for (const [name, fn] of [
        ['rosenbrock', rosenbrock],
        ['quadratic', quadratic],
      ] as const) {
        for (const t0 of [0.01, 0.1, 1, 4]) {
          const x0 = Float32Array.from(X0.slice(0, 6).map((v) => v + 0.1));
          const B = (h.p_scale as number) * rms(Array.from(x0));
          const first = fn(x0);
          const d = first.grad.map((v) => -v); // steepest descent: a descent direction along every rule's path
          const tangent = (t: number) => {
            const out = new Float32Array(x0.length);
            pathTangent(rule, rates, x0, t, d, B, out);
            return out;
          };
          const at = (t: number) => Float32Array.from(refMove(rule, h, Array.from(x0), t, Array.from(d), B));
          const p0 = tangent(0);
          const slope0 = dot64(first.grad, p0);
          assert.ok(slope0 < 0, `${name}: phi'(0) = ${slope0} < 0`);
          const search = strongWolfe(
            p0,
            { v: t0, f32: false },
            first.loss,
            first.grad,
            { v: Math.fround(slope0), f32: true },
            1e-9,
            25,
            tangent,
          );
          let r = search.next();
          while (!r.done) r = search.next(fn(at(r.value)));
          cases++;
          if (!r.value.accepted) continue;
          accepted++;
          const t = r.value.t.v;
          const e = fn(at(t));
          // The search compares in float32 (torch's types): allow its rounding, one float32 ulp of each side.
          const ulp = 2 ** -23;
          const armijo = first.loss + c1 * t * slope0;
          assert.ok(
            e.loss <= armijo + ulp * (Math.abs(first.loss) + Math.abs(e.loss)),
            `${name} t0 ${t0}: phi(${t}) = ${e.loss} > ${armijo}`,
          );
          const tanT = new Float64Array(x0.length);
          pathTangent(rule, rates, x0, t, d, B, tanT);
          const slope = dot64(e.grad, tanT);
          const slack = ulp * 4 * (dot64(e.grad.map(Math.abs), tanT.map(Math.abs)) + Math.abs(slope0));
          assert.ok(
            Math.abs(slope) <= c2 * Math.abs(slope0) + slack,
            `${name} t0 ${t0}: |phi'(${t})| = ${Math.abs(slope)} > ${c2 * Math.abs(slope0)}`,
          );
          assert.equal(e.loss, r.value.loss, 'the loss returned is the one at the accepted t');
        }
      }
      // Starts from far too short to far too long: the search brackets, extrapolates and zooms; every one ends by acceptance.
      assert.ok(accepted === cases, `${accepted} of ${cases} searches accepted`);
    });
  }
});

describe('lbfgs paths: a step along a path that does not descend', () => {
  it("stops before any evaluation when g.x'(0) >= -tolerance_change, as torch stops for g.d", () => {
    const h = lbfgsHypers(groupOf('additive', { max_iter: 5 }));
    // A path that goes uphill: its tangent is -d.
    const mover: Mover = {
      exact: false,
      move: (x, t, d) => x.map((v, i) => v - t * d[i]),
      tangent: (_x, _t, d) => d.map((v) => -v),
    };
    const x0 = Float32Array.of(1, 2);
    const state = newState();
    const gen = lbfgsStep(state, h, x0, mover, quadratic(x0));
    const r = gen.next();
    assert.equal(r.done, true, 'no evaluation asked for');
    assert.deepEqual(r.value, x0);
    assert.equal(state.funcEvals, 1);
  });
});
