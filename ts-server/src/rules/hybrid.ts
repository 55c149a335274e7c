// The hybrid rule: xi = gamma * eta_out * |theta| * tanh(eta_in * d) + (1 - gamma) * eta * d.
// The additive part lets a weight cross or leave zero; gamma = 1 is purely
// multiplicative, gamma = 0 purely additive (docs/update-rules.md). The
// default 0.9 keeps both terms at work (section 6 there says why).
import * as tf from '@tensorflow/tfjs-core';
import { num } from '../engine/hypers';
import type { RuleDef } from '../engine/types';
import { eta, LR_IN, LR_OUT, multiplicativeTerm } from './common';

export const hybrid: RuleDef = {
  name: 'hybrid',
  description: 'theta -= gamma * eta_out * |theta| * tanh(eta_in * d) + (1 - gamma) * eta * d',
  hypers: [
    LR_IN,
    LR_OUT,
    { name: 'gamma', type: 'number', default: 0.9, minimum: 0, maximum: 1, description: 'weight of the multiplicative term' },
  ],
  slots: [],
  apply(theta, d, scale, h) {
    const gamma = num(h, 'gamma');
    const mult = tf.mul(multiplicativeTerm(theta, d, h, scale), gamma);
    return { change: tf.add(mult, tf.mul(d, (1 - gamma) * eta(h, scale))), state: {} };
  },
};
