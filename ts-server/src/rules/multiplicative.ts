// The multiplicative rule (Kirtas et al. 2024): xi = eta_out * |theta| * tanh(eta_in * d).
// The step is bounded by eta_out*|theta|, so while eta_out < 1 no weight changes
// sign, and a weight at exactly zero stays zero (docs/update-rules.md).
import type { RuleDef } from '../engine/types';
import { LR_IN, LR_OUT, multiplicativeTerm } from './common';

export const multiplicative: RuleDef = {
  name: 'multiplicative',
  description: 'theta -= eta_out * |theta| * tanh(eta_in * d)',
  hypers: [LR_IN, LR_OUT],
  slots: [],
  apply: (theta, d, scale, h) => ({ change: multiplicativeTerm(theta, d, h, scale), state: {} }),
};
