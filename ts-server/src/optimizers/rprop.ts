// Rprop (torch.optim.Rprop): a step size per element, grown by etas[1] while
// the gradient keeps its sign and shrunk by etas[0] when it flips:
//   s = sign(g prev)
//   step_size = clamp(step_size * (s > 0 ? eta+ : s < 0 ? eta- : 1), step_sizes)
//   g' = s < 0 ? 0 : g   (after a flip the element waits one step; prev = g')
//   d = sign(g') step_size / lr,  scale 1
// The additive rule subtracts lr d = sign(g') step_size: torch's step. The
// other rules see the step size in units of lr (1 at the start, when
// step_size = lr), as lr_in_momentum's d (common.ts, perLr); d is 0 at lr = 0.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { num, pair } from '../engine/hypers';
import { lr, perLr } from './common';

export const rprop: OptimizerDef = {
  name: 'rprop',
  description: 'Rprop (torch.optim.Rprop): resilient backpropagation, a sign step with a step size per element.',
  hypers: [
    lr(1e-2),
    {
      name: 'etas',
      type: 'pair',
      default: [0.5, 1.2],
      items: [{ exclusiveMinimum: 0, exclusiveMaximum: 1 }, { exclusiveMinimum: 1 }],
      description: '(eta-, eta+): factors that shrink a step size after a sign change (0 < eta- < 1) and grow it otherwise (eta+ > 1)',
    },
    { name: 'step_sizes', type: 'pair', default: [1e-6, 50], minimum: 0, description: '(min, max): the bounds of every step size' },
  ],
  slots: [
    { name: 'prev', init: { fill: 0 } },
    { name: 'step_size', nonNegative: true, init: { fillFrom: 'lr' } },
  ],
  update(g, _theta, state, h) {
    const [etaMinus, etaPlus] = pair(h, 'etas');
    const [lo, hi] = pair(h, 'step_sizes');
    const s = tf.sign(tf.mul(g, state.prev));
    const ones = tf.onesLike(g);
    const flipped = tf.less(s, 0);
    const factor = tf.where(tf.greater(s, 0), tf.mul(ones, etaPlus), tf.where(flipped, tf.mul(ones, etaMinus), ones));
    const stepSize = tf.clipByValue(tf.mul(state.step_size, factor), lo, hi);
    const kept = tf.where(flipped, tf.zerosLike(g), g);
    const d = perLr(tf.mul(tf.sign(kept), stepSize), num(h, 'lr'));
    return { d, scale: 1, state: { prev: kept, step_size: stepSize } };
  },
};
