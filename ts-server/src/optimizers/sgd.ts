// SGD (docs/update-rules.md, section 3): coupled weight decay, optional momentum
// with dampening and Nesterov, as torch.optim.SGD.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef, OptimizerUpdate } from '../engine/types';
import { num, flag } from '../engine/hypers';

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
  // The momentum buffer starts as a copy of the first gradient that uses it.
  slots: [{ name: 'momentum_buffer', init: { copyOfGrad: true }, when: (h) => num(h, 'momentum') !== 0 }],
  update(g, theta, state, h): OptimizerUpdate {
    const wd = num(h, 'weight_decay');
    const mu = num(h, 'momentum');
    if (wd !== 0) g = tf.add(g, tf.mul(theta, wd));
    if (mu === 0) return { d: g, scale: 1, state: {} };
    const prev = state.momentum_buffer;
    const buf = prev === undefined ? tf.clone(g) : tf.add(tf.mul(prev, mu), tf.mul(g, 1 - num(h, 'dampening')));
    const d = flag(h, 'nesterov') ? tf.add(g, tf.mul(buf, mu)) : buf;
    return { d, scale: 1, state: { momentum_buffer: buf } };
  },
};
