// The path an L-BFGS iteration travels under a rule other than additive, and
// its tangent, for the strong Wolfe line search along it (docs/update-rules.md,
// "lbfgs", "Rules"). The move of step length t along the direction d is the
// rule applied as one plain SGD step whose gradient is -d, whose lr is t and
// whose lr_out is lr_out t / lr (session/lbfgs.ts), so, elementwise, from x0:
//   multiplicative  x(t) = x0 + k t |x0| tanh(lr_in d)                          k = lr_out / lr
//   hybrid          x(t) = x0 + gamma k t |x0| tanh(lr_in d) + (1 - gamma) t d
//   exp_sign        x(t) = clamp(x0 exp(t sign(x0) c), -B, B)                  c = clamp(d, -g_bound, g_bound)
// (the first two are straight lines in t, along another direction than d;
// exp_sign's is a curve). The tangent x'(t):
//   multiplicative  k |x0| tanh(lr_in d)
//   hybrid          gamma k |x0| tanh(lr_in d) + (1 - gamma) d
//   exp_sign        c |u|, u = x0 exp(t sign(x0) c), while |u| < B; 0 where the bound holds x
// (k = 0 at lr = 0, where the session's rule mover makes lr_out 0). The
// clamp of d does not depend on t, so it puts no kink in the path; exp_sign's
// bound B does, where |u| reaches B: there the tangent is the derivative
// from the right (0 when u moves outward, c |u| when inward). The line search
// needs no more: it only ever evaluates the slope at trial points t >= 0.
// Computed in float64 from float32 inputs and stored where `out` says (the
// session stores float32, as its vectors; the tests float64).
import type { Hypers } from '../engine/types';

export const PATH_RULES = ['multiplicative', 'hybrid', 'exp_sign'] as const;
export type PathRule = (typeof PATH_RULES)[number];

export const isPathRule = (rule: string): rule is PathRule => (PATH_RULES as readonly string[]).includes(rule);

/** The rule's rates as the session's group resolves them (lr: L-BFGS's own, the t at which lr_out is as given). */
export interface PathRates {
  lr: number;
  lrOut: number;
  lrIn: number;
  gamma: number;
  gBound: number;
}

/** The rates from the session's resolved group (lr_out etc. as the rule has them; unused ones neutral). */
export function pathRates(h: Hypers): PathRates {
  const opt = (k: string, dflt: number) => (typeof h[k] === 'number' ? h[k] : dflt);
  return { lr: opt('lr', 0), lrOut: opt('lr_out', 0), lrIn: opt('lr_in', 1), gamma: opt('gamma', 1), gBound: opt('g_bound', Infinity) };
}

/**
 * x'(t) of one parameter's slice into `out`: x0 and d its slices of the
 * point the search starts from and of the direction, `bound` its exp_sign
 * bound B (unused by the other rules).
 */
export function pathTangent(
  rule: PathRule,
  r: PathRates,
  x0: ArrayLike<number>,
  t: number,
  d: ArrayLike<number>,
  bound: number,
  out: { [i: number]: number; readonly length: number },
): void {
  const k = r.lr > 0 ? r.lrOut / r.lr : 0;
  const n = x0.length;
  switch (rule) {
    case 'multiplicative':
      for (let i = 0; i < n; i++) out[i] = k * Math.abs(x0[i]) * Math.tanh(r.lrIn * d[i]);
      return;
    case 'hybrid':
      for (let i = 0; i < n; i++) out[i] = r.gamma * k * Math.abs(x0[i]) * Math.tanh(r.lrIn * d[i]) + (1 - r.gamma) * d[i];
      return;
    case 'exp_sign':
      for (let i = 0; i < n; i++) {
        const c = Math.min(r.gBound, Math.max(-r.gBound, d[i]));
        const sc = Math.sign(x0[i]) * c;
        const u = Math.abs(x0[i] * Math.exp(t * sc));
        out[i] = u < bound || (u === bound && sc < 0) ? c * u : 0;
      }
      return;
  }
}

/**
 * exp_sign's bound from a parameter's values, p_scale rms(theta) in float32
 * as the engines store it (to their sum's rounding), for the tangent before
 * the parameter's first move has stored it.
 */
export function firstBound(pScale: number, x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.fround(Math.sqrt(s / Math.max(1, x.length)) * pScale);
}
