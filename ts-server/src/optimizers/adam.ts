// Adam (docs/update-rules.md, section 3), as torch.optim.Adam:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2  (vmax = max(vmax, v) with amsgrad)
//   d = m / (sqrt(v) / sqrt(bc2) + eps)   -- m is NOT bias-corrected inside d
//   scale = 1 / bc1, applied to eta and eta_out only.
// eps_before_correction (Keras): d = m sqrt(bc2) / (sqrt(v) + eps), same scale.
import * as tf from '@tensorflow/tfjs-core';
import type { Hypers, OptimizerDef, OptimizerUpdate, SlotDecl, State } from '../engine/types';
import { betas, ema, eps, EPS_BEFORE_CORRECTION, lr, weightDecay, withWeightDecay } from './common';
import { num, flag, pair } from '../engine/hypers';

/** The shared Adam step on an already weight-decayed gradient (Adam and AdamW). */
export function adamDirection(g: tf.Tensor, state: State, h: Hypers, t: number): OptimizerUpdate {
  const [b1, b2] = pair(h, 'betas');
  const m = ema(state.exp_avg, g, b1);
  const v = ema(state.exp_avg_sq, tf.square(g), b2);
  const next: State = { exp_avg: m, exp_avg_sq: v };
  let denomBase = v;
  if (flag(h, 'amsgrad')) {
    denomBase = tf.maximum(state.max_exp_avg_sq, v);
    next.max_exp_avg_sq = denomBase;
  }
  const bc1 = 1 - Math.pow(b1, t);
  const bc2 = 1 - Math.pow(b2, t);
  if (flag(h, 'eps_before_correction')) {
    const d = tf.div(tf.mul(m, Math.sqrt(bc2)), tf.add(tf.sqrt(denomBase), num(h, 'eps')));
    return { d, scale: 1 / bc1, state: next };
  }
  const denom = tf.add(tf.div(tf.sqrt(denomBase), Math.sqrt(bc2)), num(h, 'eps'));
  return { d: tf.div(m, denom), scale: 1 / bc1, state: next };
}

/** Adam's and AdamW's slots; max_exp_avg_sq only with AMSGrad. */
export const ADAM_SLOTS: SlotDecl[] = [
  { name: 'exp_avg', init: { fill: 0 } },
  { name: 'exp_avg_sq', nonNegative: true, init: { fill: 0 } },
  { name: 'max_exp_avg_sq', nonNegative: true, init: { fill: 0 }, when: (h) => flag(h, 'amsgrad') },
];

export const AMSGRAD = {
  name: 'amsgrad',
  type: 'boolean' as const,
  default: false,
  fixed: true,
  description: 'use the maximum of past second moments (AMSGrad)',
};

export const adam: OptimizerDef = {
  name: 'adam',
  description: 'Adam (torch.optim.Adam), with optional AMSGrad.',
  hypers: [lr(1e-3), betas(0.9, 0.999), eps(1e-8), weightDecay(0), AMSGRAD, EPS_BEFORE_CORRECTION],
  slots: ADAM_SLOTS,
  update: (g, theta, state, h, t) => adamDirection(withWeightDecay(g, theta, num(h, 'weight_decay')), state, h, t),
};
