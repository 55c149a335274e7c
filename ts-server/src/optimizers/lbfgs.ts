// L-BFGS (torch.optim.LBFGS): a quasi-Newton method over all parameters of
// the session as one flat vector, which evaluates the loss several times per
// step through the client's closure. The algorithm: lbfgsStep.ts (the
// two-loop recursion) and lbfgsLineSearch.ts (strong Wolfe); the round trips
// of a step: session/lbfgs.ts. This file holds its hyperparameters (torch's
// names and defaults) and the codec of its state as checkpoint slots of the
// session's first parameter, where torch's state_dict keeps it too.
import { choice, num } from '../engine/hypers';
import type { Hypers, OptimizerDef } from '../engine/types';
import { InvalidArgument } from '../errors';
import type { LbfgsHypers, LbfgsState } from './lbfgsStep';
import { newState } from './lbfgsStep';

export const LINE_SEARCH_FNS = ['none', 'strong_wolfe'] as const;

export const lbfgs: OptimizerDef = {
  name: 'lbfgs',
  description:
    'L-BFGS (torch.optim.LBFGS): two-loop recursion over the last history_size steps, optionally a strong Wolfe line search; step(closure) evaluates the loss on the client several times per step.',
  hypers: [
    {
      name: 'lr',
      type: 'number',
      default: 1,
      minimum: 0,
      description: 'learning rate: the step length t (the first iteration: min(1, 1/|g|_1) lr)',
    },
    { name: 'max_iter', type: 'number', integer: true, default: 20, minimum: 1, description: 'iterations per step' },
    {
      name: 'max_eval',
      type: 'number',
      integer: true,
      defaultFrom: 'max_iter',
      defaultFactor: 1.25,
      minimum: 1,
      description: "closure evaluations per step (default: floor(1.25 max_iter), torch's max_iter * 5 // 4)",
    },
    { name: 'tolerance_grad', type: 'number', default: 1e-7, minimum: 0, description: 'stop when max|g| <= tolerance_grad' },
    {
      name: 'tolerance_change',
      type: 'number',
      default: 1e-9,
      minimum: 0,
      description: 'stop when max|t d| <= tolerance_change, |loss change| < tolerance_change or g.d > -tolerance_change',
    },
    { name: 'history_size', type: 'number', integer: true, default: 100, minimum: 1, fixed: true, description: 'the (s, y) pairs kept' },
    {
      name: 'line_search_fn',
      type: 'choice',
      choices: LINE_SEARCH_FNS,
      default: 'none',
      fixed: true,
      description:
        "none (steps of length t) or strong_wolfe (cubic interpolation and zoom, c1 = 1e-4, c2 = 0.9), under every rule: along x + t d (additive) or the rule's path x(t), with slopes g.x'(t)",
    },
  ],
  slots: [],
  closure: true,
  update() {
    throw new Error('lbfgs steps through closure rounds (session/lbfgs.ts), not an engine kernel');
  },
};

export const lbfgsHypers = (h: Hypers): LbfgsHypers => ({
  lr: num(h, 'lr'),
  maxIter: num(h, 'max_iter'),
  maxEval: Math.floor(num(h, 'max_eval')),
  toleranceGrad: num(h, 'tolerance_grad'),
  toleranceChange: num(h, 'tolerance_change'),
  historySize: num(h, 'history_size'),
  strongWolfe: choice(h, 'line_search_fn') === 'strong_wolfe',
});

/** The checkpoint slots of the state (torch's state_dict keys), on the session's first parameter. */
export const LBFGS_SLOTS = [
  'func_evals',
  'n_iter',
  't',
  'H_diag',
  'prev_loss',
  'ro',
  'd',
  'prev_flat_grad',
  'old_dirs',
  'old_stps',
] as const;

/** The state as checkpoint tensors (n: the flat length). Pairs are stacked: old_dirs is [k * n]. */
export function stateSlots(s: LbfgsState, n: number): Array<{ slot: string; data: Float32Array }> {
  const out: Array<{ slot: string; data: Float32Array }> = [
    { slot: 'func_evals', data: Float32Array.of(s.funcEvals) },
    { slot: 'n_iter', data: Float32Array.of(s.nIter) },
  ];
  if (s.d === null || s.prevFlatGrad === null) return out;
  const stack = (v: Float32Array[]) => {
    const a = new Float32Array(v.length * n);
    v.forEach((x, i) => a.set(x, i * n));
    return a;
  };
  out.push(
    { slot: 't', data: Float32Array.of(s.t) },
    { slot: 'H_diag', data: Float32Array.of(s.hDiag) },
    { slot: 'prev_loss', data: Float32Array.of(s.prevLoss ?? 0) },
    { slot: 'ro', data: Float32Array.from(s.ro) },
    { slot: 'd', data: Float32Array.from(s.d) },
    { slot: 'prev_flat_grad', data: Float32Array.from(s.prevFlatGrad) },
    { slot: 'old_dirs', data: stack(s.oldDirs) },
    { slot: 'old_stps', data: stack(s.oldStps) },
  );
  return out;
}

/**
 * The state from checkpoint slots (all of them or only the two counters),
 * checked whole: sizes against n and history_size, counts whole numbers.
 * `where` names a slot in messages.
 */
export function stateFromSlots(
  slots: Map<string, Float32Array>,
  n: number,
  historySize: number,
  where: (slot: string) => string,
): LbfgsState {
  const s = newState();
  const count = (slot: string) => {
    const a = slots.get(slot);
    if (!a) return 0;
    if (a.length !== 1 || !Number.isInteger(a[0]) || a[0] < 0) throw new InvalidArgument(`${where(slot)}: must be one whole number >= 0`);
    return a[0];
  };
  s.funcEvals = count('func_evals');
  s.nIter = count('n_iter');
  // With no pair kept (k = 0) ro, old_dirs and old_stps are empty, and may be absent.
  const vectors = ['t', 'H_diag', 'prev_loss', 'd', 'prev_flat_grad'];
  const given = [...vectors, 'ro', 'old_dirs', 'old_stps'].filter((v) => slots.has(v));
  if (given.length === 0) {
    if (s.nIter > 0) throw new InvalidArgument(`${where('d')}: missing (n_iter ${s.nIter} > 0 needs the whole L-BFGS state)`);
    return s;
  }
  if (vectors.some((v) => !slots.has(v))) {
    throw new InvalidArgument(
      `${where(vectors.find((v) => !slots.has(v))!)}: missing (the L-BFGS state comes whole: ${vectors.join(', ')})`,
    );
  }
  const one = (slot: string) => {
    const a = slots.get(slot)!;
    if (a.length !== 1) throw new InvalidArgument(`${where(slot)}: ${a.length} elements, expected 1`);
    return a[0];
  };
  const ro = slots.get('ro') ?? new Float32Array(0);
  const k = ro.length;
  if (k > historySize) throw new InvalidArgument(`${where('ro')}: ${k} pairs, more than history_size ${historySize}`);
  const flat = (slot: string, len: number) => {
    const a = slots.get(slot) ?? new Float32Array(0);
    if (a.length !== len) throw new InvalidArgument(`${where(slot)}: ${a.length} elements, expected ${len}`);
    return Float32Array.from(a);
  };
  const unstack = (slot: string) => {
    const a = flat(slot, k * n);
    return Array.from({ length: k }, (_, i) => a.slice(i * n, (i + 1) * n));
  };
  Object.assign(s, {
    t: one('t'),
    hDiag: one('H_diag'),
    prevLoss: one('prev_loss'),
    ro: Array.from(ro),
    d: flat('d', n),
    prevFlatGrad: flat('prev_flat_grad', n),
    oldDirs: unstack('old_dirs'),
    oldStps: unstack('old_stps'),
  });
  return s;
}
