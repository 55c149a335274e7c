// Lion (Chen et al. 2023, "Symbolic discovery of optimization algorithms"):
//   d = sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g;  decoupled weight decay.
// torch.optim has no Lion: its reference is the paper's algorithm.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { betas, ema, lr, weightDecay, zeros } from './common';

export const lion: OptimizerDef = {
  name: 'lion',
  description: 'Lion (Chen et al. 2023): the sign of an interpolated momentum.',
  hypers: [lr(1e-4), betas(0.9, 0.99), weightDecay(0, true)],
  init: (theta) => ({ exp_avg: zeros(theta) }),
  update(g, _theta, state, h) {
    const [b1, b2] = h.betas as [number, number];
    const d = tf.sign(ema(state.exp_avg, g, b1));
    return {
      d, scale: 1, decay: 1 - (h.lr as number) * (h.weight_decay as number),
      state: { exp_avg: ema(state.exp_avg, g, b2) },
    };
  },
};
