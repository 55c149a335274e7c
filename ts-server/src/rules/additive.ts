// The additive rule: xi = eta * d (plain gradient descent on the direction).
import * as tf from '@tensorflow/tfjs-core';
import type { RuleDef } from '../engine/types';
import { eta } from './common';

export const additive: RuleDef = {
  name: 'additive',
  description: 'theta -= eta * d: the usual update; with it every optimizer is torch.optim.',
  hypers: [],
  slots: [],
  apply: (_theta, d, scale, h) => ({ change: tf.mul(d, eta(h, scale)), state: {} }),
};
