// The multiplicative rule (Kirtas et al. 2024): xi = eta_out * |theta| * tanh(eta_in * d).
// The step is bounded by eta_out*|theta|, so while eta_out < 1 no weight changes
// sign, and a weight at exactly zero stays zero.
import * as tf from '@tensorflow/tfjs-core';
import type { HyperSpec, RuleDef } from '../engine/types';

export const LR_IN: HyperSpec = {
  name: 'lr_in', type: 'number', default: 1, minimum: 0, description: 'inner learning rate eta_in (inside tanh; never scaled)',
};
export const LR_OUT: HyperSpec = {
  name: 'lr_out', type: 'number', defaultFrom: 'lr', minimum: 0, description: 'outer learning rate eta_out (defaults to lr)',
};

/** eta_out * |theta| * tanh(eta_in * d): the multiplicative term shared with the hybrid rule. */
export function multiplicativeTerm(theta: tf.Tensor, d: tf.Tensor, etaIn: number, etaOut: number): tf.Tensor {
  return tf.mul(tf.mul(tf.abs(theta), tf.tanh(tf.mul(d, etaIn))), etaOut);
}

export const multiplicative: RuleDef = {
  name: 'multiplicative',
  description: 'theta -= eta_out * |theta| * tanh(eta_in * d)',
  hypers: [LR_IN, LR_OUT],
  init: () => ({}),
  apply: (theta, d, r) => ({ change: multiplicativeTerm(theta, d, r.etaIn, r.etaOut), state: {} }),
};
