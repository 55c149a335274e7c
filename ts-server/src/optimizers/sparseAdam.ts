// SparseAdam (torch.optim.SparseAdam), on the rows a row-sparse gradient
// touches (the engine hands `update` those rows only):
//   m += (1-b1) (g - m);  v += (1-b2) (g^2 - v)
//   d = m / (sqrt(v) + eps);  scale = sqrt(bc2) / bc1   -- eps NOT bias-corrected, unlike Adam
// bc = 1 - beta^t, t this parameter's step count. Dense gradients are
// refused, as torch refuses them; no weight decay (torch has none).
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, eps, lr } from './common';
import { num, pair } from '../engine/hypers';

export const sparseAdam: OptimizerDef = {
  name: 'sparseadam',
  description: 'SparseAdam (torch.optim.SparseAdam): Adam on the rows of a row-sparse gradient only.',
  hypers: [lr(1e-3), betas(0.9, 0.999), eps(1e-8)],
  slots: [
    { name: 'exp_avg', init: { fill: 0 } },
    { name: 'exp_avg_sq', nonNegative: true, init: { fill: 0 } },
  ],
  sparse: 'only',
  update(g, _theta, state, h, t) {
    const [b1, b2] = pair(h, 'betas');
    const m = tf.add(tf.mul(tf.sub(g, state.exp_avg), 1 - b1), state.exp_avg);
    const v = tf.add(tf.mul(tf.sub(tf.square(g), state.exp_avg_sq), 1 - b2), state.exp_avg_sq);
    const d = tf.div(m, tf.add(tf.sqrt(v), num(h, 'eps')));
    return { d, scale: Math.sqrt(1 - Math.pow(b2, t)) / (1 - Math.pow(b1, t)), state: { exp_avg: m, exp_avg_sq: v } };
  },
};
