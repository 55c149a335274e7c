// Adagrad (torch.optim.Adagrad): sum += g^2; d = g / (sqrt(sum) + eps);
// eta and eta_out are divided by 1 + (t - 1) * lr_decay.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { eps, lr, weightDecay, withWeightDecay } from './common';

export const adagrad: OptimizerDef = {
  name: 'adagrad',
  description: 'Adagrad (torch.optim.Adagrad) with learning-rate decay.',
  hypers: [
    lr(1e-2),
    { name: 'lr_decay', type: 'number', default: 0, minimum: 0, description: 'eta_t = eta / (1 + (t-1) lr_decay)' },
    weightDecay(0),
    { name: 'initial_accumulator_value', type: 'number', default: 0, minimum: 0, fixed: true, description: 'starting value of the sum of squares' },
    eps(1e-10),
  ],
  init: (theta, h) => ({ sum: tf.fill(theta.shape, h.initial_accumulator_value as number) }),
  update(g, theta, state, h, t) {
    g = withWeightDecay(g, theta, h.weight_decay as number);
    const sum = tf.add(state.sum, tf.square(g));
    const d = tf.div(g, tf.add(tf.sqrt(sum), h.eps as number));
    return { d, scale: 1 / (1 + (t - 1) * (h.lr_decay as number)), state: { sum } };
  },
};
