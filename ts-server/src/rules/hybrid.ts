// The hybrid rule: xi = gamma * eta_out * |theta| * tanh(eta_in * d) + (1 - gamma) * eta * d.
// The additive part lets a weight cross or leave zero; gamma = 1 is purely
// multiplicative, gamma = 0 purely additive.
import * as tf from '@tensorflow/tfjs-core';
import type { RuleDef } from '../engine/types';
import { LR_IN, LR_OUT, multiplicativeTerm } from './multiplicative';

export const hybrid: RuleDef = {
  name: 'hybrid',
  description: 'theta -= gamma * eta_out * |theta| * tanh(eta_in * d) + (1 - gamma) * eta * d',
  hypers: [
    LR_IN,
    LR_OUT,
    { name: 'gamma', type: 'number', default: 1, minimum: 0, maximum: 1, description: 'weight of the multiplicative term' },
  ],
  init: () => ({}),
  apply(theta, d, r) {
    const mult = tf.mul(multiplicativeTerm(theta, d, r.etaIn, r.etaOut), r.gamma);
    return { change: tf.add(mult, tf.mul(d, (1 - r.gamma) * r.eta)), state: {} };
  },
};
