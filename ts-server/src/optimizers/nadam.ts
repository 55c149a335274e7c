// NAdam (torch.optim.NAdam), with momentum decay psi:
//   mu_t = b1 (1 - 0.5 * 0.96^(t psi)),  P_t = prod_{i<=t} mu_i (state mu_product)
//   denom = sqrt(v / bc2) + eps
//   d = (1 - mu_t) / (1 - P_t) * g / denom + mu_{t+1} / (1 - P_t mu_{t+1}) * m / denom
// decoupled_weight_decay (torch >= 2.2, NAdamW): g is left alone and theta
// is decayed by 1 - lr * weight_decay before the rule instead.
// P_t is a one-element tensor so it survives checkpoints without a host sync.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, coupledOrDecoupled, DECOUPLED_WEIGHT_DECAY, ema, eps, lr, weightDecay } from './common';
import { num, pair } from '../engine/hypers';

export const nadam: OptimizerDef = {
  name: 'nadam',
  description: 'NAdam (torch.optim.NAdam): Adam with Nesterov momentum.',
  hypers: [
    lr(2e-3),
    betas(0.9, 0.999),
    eps(1e-8),
    weightDecay(0),
    { name: 'momentum_decay', type: 'number', default: 4e-3, minimum: 0, description: 'psi in mu_t = b1 (1 - 0.5 * 0.96^(t psi))' },
    DECOUPLED_WEIGHT_DECAY,
  ],
  slots: [
    { name: 'exp_avg', init: { fill: 0 } },
    { name: 'exp_avg_sq', nonNegative: true, init: { fill: 0 } },
    { name: 'mu_product', init: { fill: 1 }, scalar: true },
  ],
  update(g0, theta, state, h, t) {
    const { g, decay } = coupledOrDecoupled(g0, theta, h);
    const [b1, b2] = pair(h, 'betas');
    const psi = num(h, 'momentum_decay');
    const mu = b1 * (1 - 0.5 * Math.pow(0.96, t * psi));
    const muNext = b1 * (1 - 0.5 * Math.pow(0.96, (t + 1) * psi));
    const prod = tf.mul(state.mu_product, mu);
    const m = ema(state.exp_avg, g, b1);
    const v = ema(state.exp_avg_sq, tf.square(g), b2);
    const denom = tf.add(tf.sqrt(tf.div(v, 1 - Math.pow(b2, t))), num(h, 'eps'));
    const cg = tf.div(1 - mu, tf.sub(1, prod));
    const cm = tf.div(muNext, tf.sub(1, tf.mul(prod, muNext)));
    const d = tf.add(tf.mul(tf.div(g, denom), cg), tf.mul(tf.div(m, denom), cm));
    return { d, scale: 1, decay, state: { exp_avg: m, exp_avg_sq: v, mu_product: prod } };
  },
};
