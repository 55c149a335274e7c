// Pieces shared by several optimizers: hyperparameter entries and the two
// elementwise updates every adaptive method uses.
import * as tf from '@tensorflow/tfjs-core';
import { flag, num } from '../engine/hypers';
import type { HyperSpec, Hypers } from '../engine/types';

export const lr = (dflt: number | undefined): HyperSpec => ({
  name: 'lr',
  type: 'number',
  default: dflt,
  minimum: 0,
  description: 'learning rate eta (additive part)',
});
export const betas = (b1: number, b2: number): HyperSpec => ({
  name: 'betas',
  type: 'pair',
  default: [b1, b2],
  minimum: 0,
  exclusiveMaximum: 1,
  description: 'coefficients of the running averages of the gradient and its square',
});
export const eps = (dflt: number): HyperSpec => ({
  name: 'eps',
  type: 'number',
  default: dflt,
  minimum: 0,
  description: 'term added to the denominator',
});
export const weightDecay = (dflt = 0, decoupled = false): HyperSpec => ({
  name: 'weight_decay',
  type: 'number',
  default: dflt,
  minimum: 0,
  description: decoupled ? 'decoupled weight decay: theta *= 1 - lr * weight_decay' : 'coupled L2 weight decay: g += weight_decay * theta',
});

/** Coupled (L2) weight decay, as torch.optim applies it: g + wd * theta. */
export function withWeightDecay(g: tf.Tensor, theta: tf.Tensor, wd: number): tf.Tensor {
  return wd === 0 ? g : tf.add(g, tf.mul(theta, wd));
}

/** torch >= 2.2's NAdam/RAdam flag: the weight decay leaves the gradient and multiplies theta instead. */
export const DECOUPLED_WEIGHT_DECAY: HyperSpec = {
  name: 'decoupled_weight_decay',
  type: 'boolean',
  default: false,
  description: 'torch 2.x (NAdamW, RAdamW): theta *= 1 - lr * weight_decay before the step instead of g += weight_decay * theta',
};

/**
 * The weight decay of an optimizer with torch's decoupled_weight_decay flag:
 * coupled (the gradient gains wd * theta, no decay factor) or decoupled
 * (the gradient as it is, theta decayed by 1 - lr * wd).
 */
export function coupledOrDecoupled(g: tf.Tensor, theta: tf.Tensor, h: Hypers): { g: tf.Tensor; decay: number } {
  const wd = num(h, 'weight_decay');
  return flag(h, 'decoupled_weight_decay') ? { g, decay: 1 - num(h, 'lr') * wd } : { g: withWeightDecay(g, theta, wd), decay: 1 };
}

/** Exponential moving average: beta * prev + (1 - beta) * x. */
export function ema(prev: tf.Tensor, x: tf.Tensor, beta: number): tf.Tensor {
  return tf.add(tf.mul(prev, beta), tf.mul(x, 1 - beta));
}

export const zeros = (theta: tf.Tensor) => tf.zerosLike(theta);

/*
 * Flags that reproduce other frameworks' placements (docs/frameworks.md). Each
 * is off by default, which keeps torch's formula bit for bit, and fixed at
 * creation: switching mid-run would change what the stored state means.
 */
export const EPS_BEFORE_CORRECTION: HyperSpec = {
  name: 'eps_before_correction',
  type: 'boolean',
  default: false,
  fixed: true,
  description: 'Keras: d = m sqrt(bc2) / (sqrt(v) + eps), eps added before the bias correction of v',
};
export const EPS_IN_SQRT: HyperSpec = {
  name: 'eps_in_sqrt',
  type: 'boolean',
  default: false,
  fixed: true,
  description: 'optax/Keras: eps added inside the square root, g / sqrt(v + eps)',
};
export const LR_IN_MOMENTUM: HyperSpec = {
  name: 'lr_in_momentum',
  type: 'boolean',
  default: false,
  fixed: true,
  description: "Keras: the momentum buffer accumulates lr * step (each step's own lr); d = that sum / the current lr",
};

/**
 * The direction under lr_in_momentum. The buffer holds Keras's velocity
 * (sum of mu^k lr_{t-k} x_{t-k}); the rule multiplies d by the current lr, so
 * d = step / lr makes the additive rule subtract exactly `step`, and keeps d in
 * gradient units for the other rules (equal to torch's buffer at a constant
 * lr). At lr = 0 d is 0: no rule can move theta by eta * d with eta = 0.
 */
export function perLr(step: tf.Tensor, lrNow: number): tf.Tensor {
  return lrNow > 0 ? tf.div(step, lrNow) : tf.zerosLike(step);
}
