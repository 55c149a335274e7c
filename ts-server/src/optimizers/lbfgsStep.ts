// One step of L-BFGS (torch.optim.LBFGS.step) as a resumable state machine:
// a generator that yields each point where it needs the loss and gradient
// (the client's closure, one round trip each) and returns the final point.
// The maths (docs/update-rules.md, "lbfgs"), with k pairs (s_i, y_i) kept:
//   first iteration of the session: d = -g, H_diag = 1, no pairs;
//   later: y = g - g_prev, s = t d (the last step); if y.s > 1e-10 the pair
//     joins the history (the oldest leaves past history_size) and
//     H_diag = y.s / y.y; then the two-loop recursion
//       q = -g;  for i = k-1..0: a_i = rho_i s_i.q,  q -= a_i y_i
//       r = H_diag q;  for i = 0..k-1: b_i = rho_i y_i.r,  r += (a_i - b_i) s_i
//     gives d = r (rho_i = 1 / y_i.s_i);
//   t = min(1, 1/|g|_1) lr on the session's first iteration, lr after;
//   stop when g.d > -tolerance_change (not a descent direction);
//   move to x + t d (or along the line search's accepted t), evaluate;
//   under another rule the move is the rule's (session/lbfgs.ts), the line
//   search runs along its path (lbfgsPath.ts), and d becomes the direction
//   travelled, (x_new - x) / t, so that the next s is the real step;
//   stop after max_iter iterations, max_eval evaluations, max|g| <=
//   tolerance_grad, max|t d| <= tolerance_change or |loss change| <
//   tolerance_change.
// The state persists between steps as torch keeps it (d, t, the pairs,
// H_diag, prev_flat_grad, prev_loss, n_iter, func_evals). Vectors are never
// changed in place once stored, so a copy of the state (cloneState) is a
// cheap, exact snapshot to roll back to.
import { strongWolfe, type Evaluation } from './lbfgsLineSearch';
import { axpy, dot, maxAbs, minus, scaled, sumAbs } from './lbfgsMath';
import { f32, py, type Scalar } from './lbfgsScalar';

export type { Evaluation } from './lbfgsLineSearch';

export interface LbfgsState {
  funcEvals: number;
  nIter: number;
  d: Float32Array | null;
  t: number;
  oldDirs: Float32Array[];
  oldStps: Float32Array[];
  ro: number[];
  hDiag: number;
  prevFlatGrad: Float32Array | null;
  prevLoss: number | null;
}

export interface LbfgsHypers {
  lr: number;
  maxIter: number;
  maxEval: number;
  toleranceGrad: number;
  toleranceChange: number;
  historySize: number;
  strongWolfe: boolean;
}

export const newState = (): LbfgsState => ({
  funcEvals: 0,
  nIter: 0,
  d: null,
  t: 0,
  oldDirs: [],
  oldStps: [],
  ro: [],
  hDiag: 1,
  prevFlatGrad: null,
  prevLoss: null,
});

/** A snapshot of the state (vectors shared: none is changed in place). */
export const cloneState = (s: LbfgsState): LbfgsState => ({ ...s, oldDirs: [...s.oldDirs], oldStps: [...s.oldStps], ro: [...s.ro] });

/**
 * Moves x by t along d and returns the new point: x + t d (additive, torch's
 * add_) or the session's rule applied to the direction -d with learning
 * rate t. `exact` is true for the additive move. `tangent`, for a move that
 * is not x + t d, is the path's derivative d/dt move(x, t, d) (lbfgsPath.ts):
 * the strong Wolfe line search takes its slopes along it.
 */
export interface Mover {
  exact: boolean;
  move(x: Float32Array, t: number, d: Float32Array): Float32Array;
  tangent?(x: Float32Array, t: number, d: Float32Array): Float32Array;
}

/** x + t d in float32, as torch's p.add_(d, alpha=t). */
export function addMove(x: Float32Array, t: number, d: Float32Array): Float32Array {
  const out = Float32Array.from(x);
  axpy(out, t, d);
  return out;
}

/**
 * One step from x, whose loss and gradient are `first`. Yields each point to
 * evaluate at and is resumed with its evaluation; returns the final point.
 * `state` is updated as the step goes (as torch's state dict is).
 */
export function* lbfgsStep(
  state: LbfgsState,
  h: LbfgsHypers,
  x0: Float32Array,
  mover: Mover,
  first: Evaluation,
): Generator<Float32Array, Float32Array, Evaluation> {
  let x = x0;
  let loss = first.loss;
  let g = first.grad;
  let evals = 1;
  state.funcEvals += 1;
  // torch compares its float32 tensors with the tolerances in float32.
  const tolGrad = Math.fround(h.toleranceGrad);
  const tolChange = Math.fround(h.toleranceChange);
  if (maxAbs(g) <= tolGrad) return x;
  let { d, t, hDiag, prevFlatGrad, prevLoss } = state;
  let nIter = 0;
  while (nIter < h.maxIter) {
    nIter++;
    state.nIter++;
    if (state.nIter === 1) {
      d = scaled(g, -1);
      state.oldDirs = [];
      state.oldStps = [];
      state.ro = [];
      hDiag = 1;
    } else {
      const y = minus(g, prevFlatGrad!);
      const s = scaled(d!, t);
      const ys = dot(y, s);
      if (ys > Math.fround(1e-10)) {
        if (state.oldDirs.length === h.historySize) {
          state.oldDirs.shift();
          state.oldStps.shift();
          state.ro.shift();
        }
        state.oldDirs.push(y);
        state.oldStps.push(s);
        state.ro.push(Math.fround(1 / ys));
        hDiag = Math.fround(ys / dot(y, y));
      }
      const k = state.oldDirs.length;
      const al = new Array<number>(k);
      const q = scaled(g, -1);
      for (let i = k - 1; i >= 0; i--) {
        al[i] = Math.fround(dot(state.oldStps[i], q) * state.ro[i]);
        axpy(q, -al[i], state.oldDirs[i]);
      }
      const r = scaled(q, hDiag);
      for (let i = 0; i < k; i++) {
        const be = Math.fround(dot(state.oldDirs[i], r) * state.ro[i]);
        axpy(r, Math.fround(al[i] - be), state.oldStps[i]);
      }
      d = r;
    }
    prevFlatGrad = g;
    prevLoss = loss;
    // torch: min(1.0, 1.0 / g.abs().sum()) * lr, a float32 tensor when the sum exceeds 1.
    let tS: Scalar = py(h.lr);
    if (state.nIter === 1) {
      const inv = Math.fround(1 / sumAbs(g));
      if (inv < 1) tS = f32(inv * Math.fround(h.lr));
    }
    t = tS.v;
    const gtd = dot(g, d);
    if (gtd > Math.fround(-h.toleranceChange)) break;
    let lsEvals = 0;
    let optCond = false;
    if (h.strongWolfe) {
      const from = x;
      const dir = d;
      // Along the rule's path x(t) = move(from, t, dir): phi'(t) = g(x(t)).x'(t), x'(t) = dir for x + t dir.
      const tangent = mover.tangent ? (tt: number) => mover.tangent!(from, tt, dir) : undefined;
      const p0 = tangent ? tangent(0) : dir;
      const slope0 = tangent ? dot(g, p0) : gtd;
      if (slope0 > Math.fround(-h.toleranceChange)) break; // not a descent direction along the path
      const search = strongWolfe(p0, tS, loss, g, f32(slope0), h.toleranceChange, h.maxEval - evals, tangent);
      let r = search.next();
      while (!r.done) r = search.next(yield mover.move(from, r.value, dir));
      ({ loss, grad: g, evals: lsEvals } = r.value);
      t = r.value.t.v;
      x = mover.move(from, t, dir);
      // As without line search: d becomes the direction actually travelled, so that s = t d is the real step.
      if (!mover.exact && t !== 0) d = scaled(minus(x, from), 1 / t);
      optCond = maxAbs(g) <= tolGrad;
    } else {
      const next = mover.move(x, t, d);
      // Under a rule that is not additive the step taken is not t d: d becomes the direction actually travelled.
      if (!mover.exact && t !== 0) d = scaled(minus(next, x), 1 / t);
      x = next;
      if (nIter !== h.maxIter) {
        ({ loss, grad: g } = yield x);
        optCond = maxAbs(g) <= tolGrad;
        lsEvals = 1;
      }
    }
    evals += lsEvals;
    state.funcEvals += lsEvals;
    if (nIter === h.maxIter || evals >= h.maxEval || optCond) break;
    if (maxAbs(scaled(d, t)) <= tolChange) break;
    if (Math.abs(loss - prevLoss) < h.toleranceChange) break;
  }
  Object.assign(state, { d, t, hDiag, prevFlatGrad, prevLoss });
  return x;
}
