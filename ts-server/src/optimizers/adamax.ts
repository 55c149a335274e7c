// Adamax (torch.optim.Adamax): m = b1 m + (1-b1) g; u = max(b2 u, |g| + eps);
// d = m / u; scale = 1 / bc1.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, ema, eps, lr, weightDecay, withWeightDecay } from './common';
import { num, pair } from '../engine/hypers';

export const adamax: OptimizerDef = {
  name: 'adamax',
  description: 'Adamax (torch.optim.Adamax): Adam with the infinity norm.',
  hypers: [lr(2e-3), betas(0.9, 0.999), eps(1e-8), weightDecay(0)],
  slots: [
    { name: 'exp_avg', init: { fill: 0 } },
    { name: 'exp_inf', nonNegative: true, init: { fill: 0 } },
  ],
  update(g, theta, state, h, t) {
    g = withWeightDecay(g, theta, num(h, 'weight_decay'));
    const [b1, b2] = pair(h, 'betas');
    const m = ema(state.exp_avg, g, b1);
    const u = tf.maximum(tf.mul(state.exp_inf, b2), tf.add(tf.abs(g), num(h, 'eps')));
    return { d: tf.div(m, u), scale: 1 / (1 - Math.pow(b1, t)), state: { exp_avg: m, exp_inf: u } };
  },
};
