// RMSprop (torch.optim.RMSprop): sq = alpha sq + (1-alpha) g^2;
// avg = sqrt(sq - ga^2) + eps when centered (ga the running mean of g), else sqrt(sq) + eps;
// d = buf = momentum buf + g / avg with momentum, else g / avg.
// eps_in_sqrt (optax, Keras): avg = sqrt(sq - ga^2 + eps) | sqrt(sq + eps).
// lr_in_momentum (Keras): buf = momentum buf + lr g / avg, d = buf / lr (common.ts, perLr).
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef, State } from '../engine/types';
import { ema, eps, EPS_IN_SQRT, lr, LR_IN_MOMENTUM, perLr, weightDecay, withWeightDecay, zeros } from './common';
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
    EPS_IN_SQRT,
    LR_IN_MOMENTUM,
  ],
  slots: [
    { name: 'square_avg', nonNegative: true, init: { fill: 0 } },
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
    const e = num(h, 'eps');
    const avg = flag(h, 'eps_in_sqrt') ? tf.sqrt(tf.add(variance, e)) : tf.add(tf.sqrt(variance), e);
    const step = tf.div(g, avg);
    const mu = num(h, 'momentum');
    if (mu === 0) return { d: step, scale: 1, state: next };
    const prev = state.momentum_buffer ?? zeros(theta);
    if (flag(h, 'lr_in_momentum')) {
      const lrNow = num(h, 'lr');
      const buf = tf.add(tf.mul(prev, mu), tf.mul(step, lrNow));
      next.momentum_buffer = buf;
      return { d: perLr(buf, lrNow), scale: 1, state: next };
    }
    const buf = tf.add(tf.mul(prev, mu), step);
    next.momentum_buffer = buf;
    return { d: buf, scale: 1, state: next };
  },
};
