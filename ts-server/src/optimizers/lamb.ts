// LAMB (You et al. 2019; torch.optim has none: optax.lamb is the reference):
// Adam's bias-corrected direction plus decoupled-style weight decay, scaled
// per tensor by the trust ratio ||theta|| / ||u|| (trust.ts):
//   m = ema(m, g, b1);  v = ema(v, g^2, b2)
//   u = (m / bc1) / (sqrt(v / bc2) + eps) + weight_decay theta
//   d = u ||theta|| / ||u||  (1 instead when either norm is 0),  scale 1
// The additive rule gives optax's step, theta - lr d.
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { num, pair } from '../engine/hypers';
import { betas, ema, eps } from './common';
import { trustRatio } from './trust';

export const lamb: OptimizerDef = {
  name: 'lamb',
  description: 'LAMB (optax.lamb): Adam scaled per tensor by the trust ratio ||theta|| / ||update||.',
  hypers: [
    { name: 'lr', type: 'number', minimum: 0, description: 'learning rate (required, as in optax)' },
    betas(0.9, 0.999),
    eps(1e-6),
    {
      name: 'weight_decay',
      type: 'number',
      default: 0,
      minimum: 0,
      description: 'added to the update before the trust ratio: u += weight_decay * theta',
    },
  ],
  slots: [
    { name: 'exp_avg', init: { fill: 0 } },
    { name: 'exp_avg_sq', nonNegative: true, init: { fill: 0 } },
  ],
  update(g, theta, state, h, t) {
    const [b1, b2] = pair(h, 'betas');
    const m = ema(state.exp_avg, g, b1);
    const v = ema(state.exp_avg_sq, tf.square(g), b2);
    const adam = tf.div(tf.div(m, 1 - Math.pow(b1, t)), tf.add(tf.sqrt(tf.div(v, 1 - Math.pow(b2, t))), num(h, 'eps')));
    const u = tf.add(adam, tf.mul(theta, num(h, 'weight_decay')));
    return { d: tf.mul(u, trustRatio(theta, u, 1, 0)), scale: 1, state: { exp_avg: m, exp_avg_sq: v } };
  },
};
