// Pieces shared by several optimizers: hyperparameter entries and the two
// elementwise updates every adaptive method uses.
import * as tf from '@tensorflow/tfjs-core';
import type { HyperSpec } from '../engine/types';

export const lr = (dflt: number | undefined): HyperSpec => ({
  name: 'lr', type: 'number', default: dflt, minimum: 0, description: 'learning rate eta (additive part)',
});
export const betas = (b1: number, b2: number): HyperSpec => ({
  name: 'betas', type: 'pair', default: [b1, b2], minimum: 0, exclusiveMaximum: 1,
  description: 'coefficients of the running averages of the gradient and its square',
});
export const eps = (dflt: number): HyperSpec => ({
  name: 'eps', type: 'number', default: dflt, minimum: 0, description: 'term added to the denominator',
});
export const weightDecay = (dflt = 0, decoupled = false): HyperSpec => ({
  name: 'weight_decay', type: 'number', default: dflt, minimum: 0,
  description: decoupled ? 'decoupled weight decay: theta *= 1 - lr * weight_decay' : 'coupled L2 weight decay: g += weight_decay * theta',
});

/** Coupled (L2) weight decay, as torch.optim applies it: g + wd * theta. */
export function withWeightDecay(g: tf.Tensor, theta: tf.Tensor, wd: number): tf.Tensor {
  return wd === 0 ? g : tf.add(g, tf.mul(theta, wd));
}

/** Exponential moving average: beta * prev + (1 - beta) * x. */
export function ema(prev: tf.Tensor, x: tf.Tensor, beta: number): tf.Tensor {
  return tf.add(tf.mul(prev, beta), tf.mul(x, 1 - beta));
}

export const zeros = (theta: tf.Tensor) => tf.zerosLike(theta);
