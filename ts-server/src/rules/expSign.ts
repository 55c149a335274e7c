// Madam's exp-sign rule (Bernstein et al. 2020; docs/update-rules.md):
//   theta <- clamp(theta * exp(-eta * sign(theta) * clamp(d, -g_bound, g_bound)), -B, B)
// with B = p_scale * rms(theta_0), fixed when the parameter is first seen.
import * as tf from '@tensorflow/tfjs-core';
import type { RuleDef } from '../engine/types';
import { eta } from './common';
import { num } from '../engine/hypers';

export const expSign: RuleDef = {
  name: 'exp_sign',
  description: "Madam's rule: theta *= exp(-eta * sign(theta) * clamp(d)), clamped to p_scale * rms(theta_0)",
  hypers: [
    { name: 'g_bound', type: 'number', default: 10, exclusiveMinimum: 0, description: 'd is clamped to [-g_bound, g_bound]' },
    { name: 'p_scale', type: 'number', default: 3, exclusiveMinimum: 0, description: 'theta is clamped to p_scale * rms(theta_0)' },
  ],
  // The bound as a one-element slot, so checkpoints carry it.
  slots: [{ name: 'max', init: { rmsTimes: 'p_scale' }, scalar: true }],
  apply(theta, d, scale, h, state) {
    const gb = num(h, 'g_bound');
    const bound = state.max;
    const next = tf.mul(theta, tf.exp(tf.mul(tf.mul(tf.sign(theta), tf.clipByValue(d, -gb, gb)), -eta(h, scale))));
    const clamped = tf.minimum(tf.maximum(next, tf.neg(bound)), bound);
    return { change: tf.sub(theta, clamped), state: {} };
  },
};
