// Adagrad (torch.optim.Adagrad): sum += g^2; d = g / (sqrt(sum) + eps);
// eta and eta_out are divided by 1 + (t - 1) * lr_decay.
// eps_in_sqrt (optax, Keras): d = g / sqrt(sum + eps).
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { eps, EPS_IN_SQRT, lr, weightDecay, withWeightDecay } from './common';
import { flag, num } from '../engine/hypers';

export const adagrad: OptimizerDef = {
  name: 'adagrad',
  description: 'Adagrad (torch.optim.Adagrad) with learning-rate decay.',
  hypers: [
    lr(1e-2),
    { name: 'lr_decay', type: 'number', default: 0, minimum: 0, description: 'eta_t = eta / (1 + (t-1) lr_decay)' },
    weightDecay(0),
    {
      name: 'initial_accumulator_value',
      type: 'number',
      default: 0,
      minimum: 0,
      fixed: true,
      description: 'starting value of the sum of squares',
    },
    eps(1e-10),
    EPS_IN_SQRT,
  ],
  // torch.optim.Adagrad: "weight_decay option is not compatible with sparse gradients".
  sparse: (h) => (num(h, 'weight_decay') !== 0 ? 'weight_decay: not compatible with sparse gradients (as in torch); use 0' : ''),
  slots: [{ name: 'sum', nonNegative: true, init: { fillFrom: 'initial_accumulator_value' } }],
  update(g, theta, state, h, t) {
    g = withWeightDecay(g, theta, num(h, 'weight_decay'));
    const sum = tf.add(state.sum, tf.square(g));
    const e = num(h, 'eps');
    const d = tf.div(g, flag(h, 'eps_in_sqrt') ? tf.sqrt(tf.add(sum, e)) : tf.add(tf.sqrt(sum), e));
    return { d, scale: 1 / (1 + (t - 1) * num(h, 'lr_decay')), state: { sum } };
  },
};
