// The strong Wolfe line search of torch.optim.LBFGS (line_search_fn =
// "strong_wolfe"), as a generator: each evaluation of the objective at
// x + t d (or along a rule's path x(t), lbfgsPath.ts) is a `yield` of t, answered with the loss and gradient there (the
// client's closure, one round trip). Nocedal & Wright, Numerical
// Optimization, algorithms 3.5 (bracketing) and 3.6 (zoom), with torch's
// choices: the trial step grows by cubic interpolation within
// [t + 0.01 (t - t_prev), 10 t]; zoom interpolates inside the bracket and,
// when the new point falls within 10% of an end twice running (or outside),
// moves it 10% of the bracket inward; the search stops when
// |bracket width| max|d| < tolerance_change or after max_ls evaluations.
//   sufficient decrease (Armijo): f(t) <= f(0) + c1 t g(0).d
//   curvature (strong):            |g(t).d| <= -c2 g(0).d
// The directional derivatives g.d are float32 dot products (lbfgsMath.ts),
// and every scalar follows torch's types (lbfgsScalar.ts): near convergence
// the tests compare numbers within a float32 ulp, so which of them torch
// rounds to float32 decides how many evaluations a search takes.
import { dot } from './lbfgsMath';
import { abs, add, f32, ge, gt, le, lt, max, min, mul, py, sub, div, sqrt, type Scalar } from './lbfgsScalar';

export interface Evaluation {
  loss: number;
  grad: Float32Array;
}

export interface LineSearchResult {
  loss: number;
  grad: Float32Array;
  t: Scalar;
  evals: number;
  /** The search ended at a point of both conditions (else on its evaluation budget or the bracket's width). */
  accepted: boolean;
}

/**
 * The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped
 * to `bounds` (default: the interval between x1 and x2); the midpoint of the
 * bounds when the cubic has no real minimiser.
 */
export function cubicInterpolate(
  x1: Scalar,
  f1: Scalar,
  g1: Scalar,
  x2: Scalar,
  f2: Scalar,
  g2: Scalar,
  bounds?: [Scalar, Scalar],
): Scalar {
  const [lo, hi] = bounds ?? (le(x1, x2) ? [x1, x2] : [x2, x1]);
  const d1 = sub(add(g1, g2), div(mul(py(3), sub(f1, f2)), sub(x1, x2)));
  const d2sq = sub(mul(d1, d1), mul(g1, g2));
  if (ge(d2sq, py(0))) {
    const d2 = sqrt(d2sq);
    const at = le(x1, x2)
      ? sub(x2, mul(sub(x2, x1), div(sub(add(g2, d2), d1), add(sub(g2, g1), mul(py(2), d2)))))
      : sub(x1, mul(sub(x1, x2), div(sub(add(g1, d2), d1), add(sub(g1, g2), mul(py(2), d2)))));
    return min(max(at, lo), hi);
  }
  return div(add(lo, hi), py(2));
}

/**
 * Searches along d from the point where the loss is f and the gradient g
 * (gtd = g.d < 0), starting at step t. Yields each trial step; returns the
 * accepted step with its loss and gradient and the number of evaluations.
 * Along a curved path x(t) (a rule's move, lbfgsPath.ts) `tangent` gives
 * x'(t), d is x'(0) and the slopes are g(t).x'(t); without it the path is
 * the line x + t d, x'(t) = d (torch's search, bit for bit). The search
 * itself works in t only: its cubics and bracket do not care which.
 */
export function* strongWolfe(
  d: Float32Array,
  t: Scalar,
  fLoss: number,
  g: Float32Array,
  gtd: Scalar,
  tolChange: number,
  maxLs: number,
  tangent?: (t: number) => Float32Array,
  c1 = 1e-4,
  c2 = 0.9,
): Generator<number, LineSearchResult, Evaluation> {
  const f = py(fLoss);
  const tol = py(tolChange);
  // The bracket is too narrow when its width times max|x'(0)| is below tolerance_change.
  let dn = 0;
  for (let i = 0; i < d.length; i++) dn = Math.max(dn, Math.abs(d[i]));
  const dNorm = f32(dn);
  const slope = (tt: Scalar, gt: Float32Array) => f32(dot(gt, tangent ? tangent(tt.v) : d));
  const armijo = (tt: Scalar) => add(f, mul(mul(py(c1), tt), gtd));
  const curvature = mul(py(-c2), gtd);
  let e = yield t.v;
  let fNew = py(e.loss);
  let gNew = e.grad;
  let evals = 1;
  let gtdNew = slope(t, gNew);
  let tPrev = py(0);
  let fPrev = f;
  let gPrev = g;
  let gtdPrev = gtd;
  let done = false;
  let lsIter = 0;
  let br: Scalar[] = [];
  let brF: Scalar[] = [];
  let brG: Float32Array[] = [];
  let brGtd: Scalar[] = [];
  // Bracketing: grow t until an interval holds a point of both conditions.
  while (lsIter < maxLs) {
    if (gt(fNew, armijo(t)) || (lsIter > 1 && ge(fNew, fPrev))) {
      [br, brF, brG, brGtd] = [
        [tPrev, t],
        [fPrev, fNew],
        [gPrev, gNew],
        [gtdPrev, gtdNew],
      ];
      break;
    }
    if (le(abs(gtdNew), curvature)) {
      [br, brF, brG] = [[t], [fNew], [gNew]];
      done = true;
      break;
    }
    if (ge(gtdNew, py(0))) {
      [br, brF, brG, brGtd] = [
        [tPrev, t],
        [fPrev, fNew],
        [gPrev, gNew],
        [gtdPrev, gtdNew],
      ];
      break;
    }
    const next = cubicInterpolate(tPrev, fPrev, gtdPrev, t, fNew, gtdNew, [add(t, mul(py(0.01), sub(t, tPrev))), mul(t, py(10))]);
    tPrev = t;
    t = next;
    fPrev = fNew;
    gPrev = gNew;
    gtdPrev = gtdNew;
    e = yield t.v;
    fNew = py(e.loss);
    gNew = e.grad;
    evals++;
    gtdNew = slope(t, gNew);
    lsIter++;
  }
  if (lsIter === maxLs) {
    [br, brF, brG] = [
      [py(0), t],
      [f, fNew],
      [g, gNew],
    ];
  }
  // Zoom: shrink the bracket until a point satisfies both conditions.
  let insufficient = false;
  let [low, high] = le(brF[0], brF[brF.length - 1]) ? [0, 1] : [1, 0];
  while (!done && lsIter < maxLs) {
    if (lt(mul(abs(sub(br[1], br[0])), dNorm), tol)) break;
    t = cubicInterpolate(br[0], brF[0], brGtd[0], br[1], brF[1], brGtd[1]);
    const bmax = max(br[0], br[1]);
    const bmin = min(br[0], br[1]);
    const eps = mul(py(0.1), sub(bmax, bmin));
    if (lt(min(sub(bmax, t), sub(t, bmin)), eps)) {
      if (insufficient || ge(t, bmax) || le(t, bmin)) {
        t = lt(abs(sub(t, bmax)), abs(sub(t, bmin))) ? sub(bmax, eps) : add(bmin, eps);
        insufficient = false;
      } else {
        insufficient = true;
      }
    } else {
      insufficient = false;
    }
    e = yield t.v;
    fNew = py(e.loss);
    gNew = e.grad;
    evals++;
    gtdNew = slope(t, gNew);
    lsIter++;
    if (gt(fNew, armijo(t)) || ge(fNew, brF[low])) {
      br[high] = t;
      brF[high] = fNew;
      brG[high] = gNew;
      brGtd[high] = gtdNew;
      [low, high] = le(brF[0], brF[1]) ? [0, 1] : [1, 0];
    } else {
      if (le(abs(gtdNew), curvature)) {
        done = true;
      } else if (ge(mul(gtdNew, sub(br[high], br[low])), py(0))) {
        br[high] = br[low];
        brF[high] = brF[low];
        brG[high] = brG[low];
        brGtd[high] = brGtd[low];
      }
      br[low] = t;
      brF[low] = fNew;
      brG[low] = gNew;
      brGtd[low] = gtdNew;
    }
  }
  return { loss: brF[low].v, grad: brG[low], t: br[low], evals, accepted: done };
}
