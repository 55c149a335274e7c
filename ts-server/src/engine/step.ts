// One parameter's step: the optimizer's direction, then the rule's change,
// then the one subtraction of the framework (theta_t = theta_{t-1} - xi).
import * as tf from '@tensorflow/tfjs-core';
import type { Hypers, OptimizerDef, RuleDef, RuleRates, State } from './types';

/** The rates a rule sees: eta and eta_out carry the optimizer's scale, eta_in never does. */
export function ruleRates(h: Hypers, scale: number): RuleRates {
  return {
    eta: (h.lr as number) * scale,
    etaIn: (h.lr_in as number) ?? 1,
    etaOut: (h.lr_out as number) * scale,
    gamma: (h.gamma as number) ?? 1,
  };
}

export interface ParamStepResult {
  theta: tf.Tensor;
  optState: State;
  ruleState: State;
}

/**
 * Computes (never assigns) one parameter's new value and states. The caller
 * runs it inside tf.tidy and keeps what it returns.
 */
export function stepParam(
  opt: OptimizerDef,
  rule: RuleDef,
  theta: tf.Tensor,
  g: tf.Tensor,
  optState: State,
  ruleState: State,
  h: Hypers,
  t: number,
): ParamStepResult {
  const u = opt.update(g, theta, optState, h, t);
  const decayed = u.decay === undefined || u.decay === 1 ? theta : tf.mul(theta, u.decay);
  const r = rule.apply(decayed, u.d, ruleRates(h, u.scale), h, ruleState);
  return { theta: tf.sub(decayed, r.change), optState: u.state, ruleState: r.state };
}
