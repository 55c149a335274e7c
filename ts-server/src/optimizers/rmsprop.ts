// RMSprop (torch.optim.RMSprop): sq = alpha sq + (1-alpha) g^2;
// avg = sqrt(sq - ga^2) + eps when centered (ga the running mean of g), else sqrt(sq) + eps;
// d = buf = momentum buf + g / avg with momentum, else g / avg.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef, State } from '../engine/types';
import { ema, eps, lr, weightDecay, withWeightDecay, zeros } from './common';
import { num, flag } from '../engine/hypers';

export const rmsprop: OptimizerDef = {
  name: 'rmsprop',
  description: 'RMSprop (torch.optim.RMSprop), optionally centered, with momentum.',
  hypers: [
    lr(1e-2),
    { name: 'alpha', type: 'number', default: 0.99, minimum: 0, maximum: 1, description: 'smoothing constant' },
    eps(1e-8),
    weightDecay(0),
    { name: 'momentum', type: 'number', default: 0, minimum: 0, description: 'momentum factor' },
    { name: 'centered', type: 'boolean', default: false, fixed: true, description: 'normalise by the variance estimate' },
  ],
  slots: [
    { name: 'square_avg', init: { fill: 0 } },
    { name: 'grad_avg', init: { fill: 0 }, when: (h) => flag(h, 'centered') },
    { name: 'momentum_buffer', init: { fill: 0 }, when: (h) => num(h, 'momentum') > 0 },
  ],
  update(g, theta, state, h) {
    g = withWeightDecay(g, theta, num(h, 'weight_decay'));
    const alpha = num(h, 'alpha');
    const sq = ema(state.square_avg, tf.square(g), alpha);
    const next: State = { square_avg: sq };
    let variance = sq;
    if (flag(h, 'centered')) {
      const ga = ema(state.grad_avg, g, alpha);
      next.grad_avg = ga;
      variance = tf.sub(sq, tf.square(ga));
    }
    const step = tf.div(g, tf.add(tf.sqrt(variance), num(h, 'eps')));
    const mu = num(h, 'momentum');
    if (mu === 0) return { d: step, scale: 1, state: next };
    const prev = state.momentum_buffer ?? zeros(theta);
    const buf = tf.add(tf.mul(prev, mu), step);
    next.momentum_buffer = buf;
    return { d: buf, scale: 1, state: next };
  },
};
