// Lion (Chen et al. 2023, "Symbolic discovery of optimization algorithms"):
//   d = sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g;  decoupled weight decay.
// torch.optim has no Lion: its reference is the paper's algorithm.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, ema, lr, weightDecay } from './common';
import { num, pair } from '../engine/hypers';

export const lion: OptimizerDef = {
  name: 'lion',
  description: 'Lion (Chen et al. 2023): the sign of an interpolated momentum.',
  hypers: [lr(1e-4), betas(0.9, 0.99), weightDecay(0, true)],
  slots: [{ name: 'exp_avg', init: { fill: 0 } }],
  update(g, _theta, state, h) {
    const [b1, b2] = pair(h, 'betas');
    const d = tf.sign(ema(state.exp_avg, g, b1));
    return {
      d,
      scale: 1,
      decay: 1 - num(h, 'lr') * num(h, 'weight_decay'),
      state: { exp_avg: ema(state.exp_avg, g, b2) },
    };
  },
};
