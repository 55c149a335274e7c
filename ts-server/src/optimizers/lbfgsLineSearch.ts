// The strong Wolfe line search of torch.optim.LBFGS (line_search_fn =
// "strong_wolfe"), as a generator: each evaluation of the objective at
// x + t d is a `yield` of t, answered with the loss and gradient there (the
// client's closure, one round trip). Nocedal & Wright, Numerical
// Optimization, algorithms 3.5 (bracketing) and 3.6 (zoom), with torch's
// choices: the trial step grows by cubic interpolation within
// [t + 0.01 (t - t_prev), 10 t]; zoom interpolates inside the bracket and,
// when the new point falls within 10% of an end twice running (or outside),
// moves it 10% of the bracket inward; the search stops when
// |bracket width| max|d| < tolerance_change or after max_ls evaluations.
//   sufficient decrease (Armijo): f(t) <= f(0) + c1 t g(0).d
//   curvature (strong):            |g(t).d| <= -c2 g(0).d
// The directional derivatives g.d are float32 dot products (lbfgs.ts: dot).
import { dot } from './lbfgsMath';

export interface Evaluation {
  loss: number;
  grad: Float32Array;
}

export interface LineSearchResult {
  loss: number;
  grad: Float32Array;
  t: number;
  evals: number;
}

/**
 * The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped
 * to `bounds` (default: the interval between x1 and x2); the midpoint of the
 * bounds when the cubic has no real minimiser.
 */
export function cubicInterpolate(x1: number, f1: number, g1: number, x2: number, f2: number, g2: number, bounds?: [number, number]): number {
  const [lo, hi] = bounds ?? (x1 <= x2 ? [x1, x2] : [x2, x1]);
  const d1 = g1 + g2 - (3 * (f1 - f2)) / (x1 - x2);
  const d2sq = d1 * d1 - g1 * g2;
  if (d2sq >= 0) {
    const d2 = Math.sqrt(d2sq);
    const at = x1 <= x2 ? x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)) : x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2));
    return Math.min(Math.max(at, lo), hi);
  }
  return (lo + hi) / 2;
}

/**
 * Searches along d from the point where the loss is f and the gradient g
 * (gtd = g.d < 0), starting at step t. Yields each trial step; returns the
 * accepted step with its loss and gradient and the number of evaluations.
 */
export function* strongWolfe(
  d: Float32Array,
  t: number,
  f: number,
  g: Float32Array,
  gtd: number,
  tolChange: number,
  maxLs: number,
  c1 = 1e-4,
  c2 = 0.9,
): Generator<number, LineSearchResult, Evaluation> {
  let dNorm = 0;
  for (let i = 0; i < d.length; i++) dNorm = Math.max(dNorm, Math.abs(d[i]));
  let e = yield t;
  let fNew = e.loss;
  let gNew = e.grad;
  let evals = 1;
  let gtdNew = dot(gNew, d);
  let tPrev = 0;
  let fPrev = f;
  let gPrev = g;
  let gtdPrev = gtd;
  let done = false;
  let lsIter = 0;
  let br: number[] = [];
  let brF: number[] = [];
  let brG: Float32Array[] = [];
  let brGtd: number[] = [];
  // Bracketing: grow t until an interval holds a point of both conditions.
  while (lsIter < maxLs) {
    if (fNew > f + c1 * t * gtd || (lsIter > 1 && fNew >= fPrev)) {
      [br, brF, brG, brGtd] = [
        [tPrev, t],
        [fPrev, fNew],
        [gPrev, gNew],
        [gtdPrev, gtdNew],
      ];
      break;
    }
    if (Math.abs(gtdNew) <= -c2 * gtd) {
      [br, brF, brG] = [[t], [fNew], [gNew]];
      done = true;
      break;
    }
    if (gtdNew >= 0) {
      [br, brF, brG, brGtd] = [
        [tPrev, t],
        [fPrev, fNew],
        [gPrev, gNew],
        [gtdPrev, gtdNew],
      ];
      break;
    }
    const next = cubicInterpolate(tPrev, fPrev, gtdPrev, t, fNew, gtdNew, [t + 0.01 * (t - tPrev), t * 10]);
    tPrev = t;
    t = next;
    fPrev = fNew;
    gPrev = gNew;
    gtdPrev = gtdNew;
    e = yield t;
    fNew = e.loss;
    gNew = e.grad;
    evals++;
    gtdNew = dot(gNew, d);
    lsIter++;
  }
  if (lsIter === maxLs) {
    [br, brF, brG] = [
      [0, t],
      [f, fNew],
      [g, gNew],
    ];
  }
  // Zoom: shrink the bracket until a point satisfies both conditions.
  let insufficient = false;
  let [low, high] = brF[0] <= brF[brF.length - 1] ? [0, 1] : [1, 0];
  while (!done && lsIter < maxLs) {
    if (Math.abs(br[1] - br[0]) * dNorm < tolChange) break;
    t = cubicInterpolate(br[0], brF[0], brGtd[0], br[1], brF[1], brGtd[1]);
    const bmax = Math.max(...br);
    const bmin = Math.min(...br);
    const eps = 0.1 * (bmax - bmin);
    if (Math.min(bmax - t, t - bmin) < eps) {
      if (insufficient || t >= bmax || t <= bmin) {
        t = Math.abs(t - bmax) < Math.abs(t - bmin) ? bmax - eps : bmin + eps;
        insufficient = false;
      } else {
        insufficient = true;
      }
    } else {
      insufficient = false;
    }
    e = yield t;
    fNew = e.loss;
    gNew = e.grad;
    evals++;
    gtdNew = dot(gNew, d);
    lsIter++;
    if (fNew > f + c1 * t * gtd || fNew >= brF[low]) {
      br[high] = t;
      brF[high] = fNew;
      brG[high] = gNew;
      brGtd[high] = gtdNew;
      [low, high] = brF[0] <= brF[1] ? [0, 1] : [1, 0];
    } else {
      if (Math.abs(gtdNew) <= -c2 * gtd) {
        done = true;
      } else if (gtdNew * (br[high] - br[low]) >= 0) {
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
  return { loss: brF[low], grad: brG[low], t: br[low], evals };
}
