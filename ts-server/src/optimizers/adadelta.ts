// Adadelta (torch.optim.Adadelta): sq = rho sq + (1-rho) g^2;
// d = sqrt(acc + eps) / sqrt(sq + eps) * g;  acc = rho acc + (1-rho) d^2.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { ema, eps, lr, weightDecay, withWeightDecay } from './common';
import { num } from '../engine/hypers';

export const adadelta: OptimizerDef = {
  name: 'adadelta',
  description: 'Adadelta (torch.optim.Adadelta).',
  hypers: [
    lr(1.0),
    { name: 'rho', type: 'number', default: 0.9, minimum: 0, maximum: 1, description: 'coefficient of the running averages' },
    eps(1e-6),
    weightDecay(0),
  ],
  slots: [
    { name: 'square_avg', nonNegative: true, init: { fill: 0 } },
    { name: 'acc_delta', nonNegative: true, init: { fill: 0 } },
  ],
  update(g, theta, state, h) {
    g = withWeightDecay(g, theta, num(h, 'weight_decay'));
    const rho = num(h, 'rho');
    const e = num(h, 'eps');
    const sq = ema(state.square_avg, tf.square(g), rho);
    const d = tf.mul(tf.div(tf.sqrt(tf.add(state.acc_delta, e)), tf.sqrt(tf.add(sq, e))), g);
    const acc = ema(state.acc_delta, tf.square(d), rho);
    return { d, scale: 1, state: { square_avg: sq, acc_delta: acc } };
  },
};
