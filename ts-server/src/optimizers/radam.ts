// RAdam (torch.optim.RAdam): Adam's moments; with rho_inf = 2/(1-b2) - 1 and
// rho_t = rho_inf - 2 t b2^t / bc2, the direction is rectified when rho_t > 5:
//   d = m * r_t * sqrt(bc2) / (sqrt(v) + eps),  r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
// and d = m otherwise; scale = 1 / bc1.
// decoupled_weight_decay (torch >= 2.2, RAdamW): g is left alone and theta
// is decayed by 1 - lr * weight_decay before the rule instead.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, coupledOrDecoupled, DECOUPLED_WEIGHT_DECAY, ema, eps, lr, weightDecay } from './common';
import { num, pair } from '../engine/hypers';

export const radam: OptimizerDef = {
  name: 'radam',
  description: 'RAdam (torch.optim.RAdam): Adam with variance rectification.',
  hypers: [lr(1e-3), betas(0.9, 0.999), eps(1e-8), weightDecay(0), DECOUPLED_WEIGHT_DECAY],
  slots: [
    { name: 'exp_avg', init: { fill: 0 } },
    { name: 'exp_avg_sq', nonNegative: true, init: { fill: 0 } },
  ],
  update(g0, theta, state, h, t) {
    const { g, decay } = coupledOrDecoupled(g0, theta, h);
    const [b1, b2] = pair(h, 'betas');
    const m = ema(state.exp_avg, g, b1);
    const v = ema(state.exp_avg_sq, tf.square(g), b2);
    const bc2 = 1 - Math.pow(b2, t);
    const rhoInf = 2 / (1 - b2) - 1;
    const rhoT = rhoInf - (2 * t * Math.pow(b2, t)) / bc2;
    let d = m;
    if (rhoT > 5) {
      const rect = Math.sqrt(((rhoT - 4) * (rhoT - 2) * rhoInf) / ((rhoInf - 4) * (rhoInf - 2) * rhoT));
      d = tf.mul(tf.div(m, tf.add(tf.sqrt(v), num(h, 'eps'))), rect * Math.sqrt(bc2));
    }
    return { d, scale: 1 / (1 - Math.pow(b1, t)), decay, state: { exp_avg: m, exp_avg_sq: v } };
  },
};
