// Madam's exp-sign rule (Bernstein et al. 2020), written from UPDATE_RULES.md:
//   theta <- clamp(theta * exp(-eta * sign(theta) * clamp(d, -g_bound, g_bound)), -B, B)
// with B = p_scale * rms(theta_0), fixed when the parameter is first seen.
import * as tf from '@tensorflow/tfjs-core';
import type { RuleDef } from '../engine/types';

export const expSign: RuleDef = {
  name: 'exp_sign',
  description: "Madam's rule: theta *= exp(-eta * sign(theta) * clamp(d)), clamped to p_scale * rms(theta_0)",
  hypers: [
    { name: 'g_bound', type: 'number', default: 10, exclusiveMinimum: 0, description: 'd is clamped to [-g_bound, g_bound]' },
    { name: 'p_scale', type: 'number', default: 3, exclusiveMinimum: 0, description: 'theta is clamped to p_scale * rms(theta_0)' },
  ],
  // The bound as a one-element tensor, so checkpoints carry it.
  init: (theta, h) => ({
    max: tf.tidy(() => tf.reshape(tf.mul(tf.sqrt(tf.mean(tf.square(theta))), h.p_scale as number), [1])),
  }),
  apply(theta, d, r, h, state) {
    const gb = h.g_bound as number;
    const bound = state.max;
    const next = tf.mul(theta, tf.exp(tf.mul(tf.mul(tf.sign(theta), tf.clipByValue(d, -gb, gb)), -r.eta)));
    const clamped = tf.minimum(tf.maximum(next, tf.neg(bound)), bound);
    return { change: tf.sub(theta, clamped), state: {} };
  },
};
