// Adamax (torch.optim.Adamax): m = b1 m + (1-b1) g; u = max(b2 u, |g| + eps);
// d = m / u; scale = 1 / bc1.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, ema, eps, lr, weightDecay, withWeightDecay, zeros } from './common';

export const adamax: OptimizerDef = {
  name: 'adamax',
  description: 'Adamax (torch.optim.Adamax): Adam with the infinity norm.',
  hypers: [lr(2e-3), betas(0.9, 0.999), eps(1e-8), weightDecay(0)],
  init: (theta) => ({ exp_avg: zeros(theta), exp_inf: zeros(theta) }),
  update(g, theta, state, h, t) {
    g = withWeightDecay(g, theta, h.weight_decay as number);
    const [b1, b2] = h.betas as [number, number];
    const m = ema(state.exp_avg, g, b1);
    const u = tf.maximum(tf.mul(state.exp_inf, b2), tf.add(tf.abs(g), h.eps as number));
    return { d: tf.div(m, u), scale: 1 / (1 - Math.pow(b1, t)), state: { exp_avg: m, exp_inf: u } };
  },
};
