// What the multiplicative and hybrid rules share: their rate hyperparameters
// and the multiplicative term. Each rule reads its own rates from its own
// hyperparameters; `scale` (the optimizer's step-size factor) multiplies
// lr and lr_out, never lr_in (docs/update-rules.md, section 1).
import * as tf from '@tensorflow/tfjs-core';
import { num } from '../engine/hypers';
import type { HyperSpec, Hypers } from '../engine/types';

export const LR_IN: HyperSpec = {
  name: 'lr_in',
  type: 'number',
  default: 1,
  minimum: 0,
  description: 'inner learning rate eta_in (inside tanh; never scaled)',
};
// lr_out defaults to 10 x lr, not lr: the multiplicative step is bounded by
// lr_out * |theta|, and the project's learning-rate sweep puts the
// multiplicative rule's optimum well above the additive one (docs/update-rules.md, section 6).
export const LR_OUT_FACTOR = 10;
export const LR_OUT: HyperSpec = {
  name: 'lr_out',
  type: 'number',
  defaultFrom: 'lr',
  defaultFactor: LR_OUT_FACTOR,
  minimum: 0,
  description: 'outer learning rate eta_out',
};

/** eta = lr * scale, the additive rate. */
export const eta = (h: Hypers, scale: number) => num(h, 'lr') * scale;

/** eta_out * |theta| * tanh(eta_in * d), with eta_out = lr_out * scale. */
export function multiplicativeTerm(theta: tf.Tensor, d: tf.Tensor, h: Hypers, scale: number): tf.Tensor {
  return tf.mul(tf.mul(tf.abs(theta), tf.tanh(tf.mul(d, num(h, 'lr_in')))), num(h, 'lr_out') * scale);
}
