// The additive rule: xi = eta * d (plain gradient descent on the direction).
import * as tf from '@tensorflow/tfjs-core';
import type { RuleDef } from '../engine/types';

export const additive: RuleDef = {
  name: 'additive',
  description: 'theta -= eta * d: the usual update; with it every optimizer is torch.optim.',
  hypers: [],
  init: () => ({}),
  apply: (_theta, d, r) => ({ change: tf.mul(d, r.eta), state: {} }),
};
