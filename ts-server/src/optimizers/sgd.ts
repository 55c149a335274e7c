// SGD (UPDATE_RULES.md section 3): coupled weight decay, optional momentum
// with dampening and Nesterov, as torch.optim.SGD.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef, OptimizerUpdate } from '../engine/types';

export const sgd: OptimizerDef = {
  name: 'sgd',
  description: 'Stochastic gradient descent with momentum, dampening and Nesterov (torch.optim.SGD).',
  hypers: [
    { name: 'lr', type: 'number', minimum: 0, description: 'additive learning rate eta (required, as in torch)' },
    { name: 'momentum', type: 'number', default: 0, minimum: 0, description: 'momentum factor mu' },
    { name: 'dampening', type: 'number', default: 0, minimum: 0, maximum: 1, description: 'dampening tau' },
    { name: 'weight_decay', type: 'number', default: 0, minimum: 0, description: 'coupled L2 weight decay' },
    { name: 'nesterov', type: 'boolean', default: false, description: 'Nesterov momentum (needs momentum > 0, dampening 0)' },
  ],
  // The momentum buffer is created on the first step that uses momentum.
  init: () => ({}),
  update(g, theta, state, h): OptimizerUpdate {
    const wd = h.weight_decay as number;
    const mu = h.momentum as number;
    if (wd !== 0) g = tf.add(g, tf.mul(theta, wd));
    if (mu === 0) return { d: g, scale: 1, state: {} };
    const prev = state.momentum_buffer;
    const buf = prev === undefined ? tf.clone(g) : tf.add(tf.mul(prev, mu), tf.mul(g, 1 - (h.dampening as number)));
    const d = h.nesterov ? tf.add(g, tf.mul(buf, mu)) : buf;
    return { d, scale: 1, state: { momentum_buffer: buf } };
  },
};
