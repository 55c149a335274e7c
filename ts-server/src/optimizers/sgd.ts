// SGD (docs/update-rules.md, section 3): coupled weight decay, optional momentum
// with dampening and Nesterov, as torch.optim.SGD.
// lr_in_momentum (Keras): the buffer accumulates lr g (first: lr g, then
// mu buf + (1 - tau) lr g), the step is buf (Nesterov: lr g + mu buf), and
// d = step / lr (common.ts, perLr), so the additive rule subtracts the step.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef, OptimizerUpdate } from '../engine/types';
import { num, flag } from '../engine/hypers';
import { LR_IN_MOMENTUM, perLr } from './common';

export const sgd: OptimizerDef = {
  name: 'sgd',
  description: 'Stochastic gradient descent with momentum, dampening and Nesterov (torch.optim.SGD).',
  hypers: [
    { name: 'lr', type: 'number', minimum: 0, description: 'additive learning rate eta (required, as in torch)' },
    { name: 'momentum', type: 'number', default: 0, minimum: 0, description: 'momentum factor mu' },
    { name: 'dampening', type: 'number', default: 0, minimum: 0, maximum: 1, description: 'dampening tau' },
    { name: 'weight_decay', type: 'number', default: 0, minimum: 0, description: 'coupled L2 weight decay' },
    { name: 'nesterov', type: 'boolean', default: false, description: 'Nesterov momentum (needs momentum > 0, dampening 0)' },
    LR_IN_MOMENTUM,
  ],
  // torch's sparse SGD keeps a sparse buffer whose every stored row moves each step, touched or not.
  sparse: (h) =>
    num(h, 'momentum') !== 0
      ? 'momentum: a sparse momentum buffer moves rows the gradient does not touch; use momentum 0'
      : num(h, 'weight_decay') !== 0
        ? 'weight_decay: decay touches every row; use weight_decay 0'
        : '',
  // The momentum buffer starts as a copy of the first gradient that uses it.
  slots: [{ name: 'momentum_buffer', init: { copyOfGrad: true }, when: (h) => num(h, 'momentum') !== 0 }],
  update(g, theta, state, h): OptimizerUpdate {
    const wd = num(h, 'weight_decay');
    const mu = num(h, 'momentum');
    if (wd !== 0) g = tf.add(g, tf.mul(theta, wd));
    if (mu === 0) return { d: g, scale: 1, state: {} };
    const prev = state.momentum_buffer;
    if (flag(h, 'lr_in_momentum')) {
      const lrNow = num(h, 'lr');
      const gl = tf.mul(g, lrNow);
      const buf = prev === undefined ? gl : tf.add(tf.mul(prev, mu), tf.mul(gl, 1 - num(h, 'dampening')));
      const step = flag(h, 'nesterov') ? tf.add(gl, tf.mul(buf, mu)) : buf;
      return { d: perLr(step, lrNow), scale: 1, state: { momentum_buffer: buf } };
    }
    const buf = prev === undefined ? tf.clone(g) : tf.add(tf.mul(prev, mu), tf.mul(g, 1 - num(h, 'dampening')));
    const d = flag(h, 'nesterov') ? tf.add(g, tf.mul(buf, mu)) : buf;
    return { d, scale: 1, state: { momentum_buffer: buf } };
  },
};
