// One parameter's step on tfjs tensors: the optimizer's direction, then the
// rule's change, then the one subtraction of the framework
// (theta_t = theta_{t-1} - xi). The native engine composes the same pieces in
// C++ (native/src/kernels.cc), with the subtraction in one place there too.
import * as tf from '@tensorflow/tfjs-core';
import type { Hypers, OptimizerDef, RuleDef, State } from './types';

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
  if (opt.ruleOn) {
    // Schedule-Free: the rule moves z; theta (y) follows from z before and after.
    const z = optState[opt.ruleOn.slot];
    const r = rule.apply(z, u.d, u.scale, h, ruleState);
    const zNew = tf.sub(z, r.change);
    const next = opt.ruleOn.combine(theta, z, zNew, optState, h, t);
    return { theta: next, optState: { ...u.state, [opt.ruleOn.slot]: zNew }, ruleState: r.state };
  }
  const decayed = u.decay === undefined || u.decay === 1 ? theta : tf.mul(theta, u.decay);
  const r = rule.apply(decayed, u.d, u.scale, h, ruleState);
  const next = tf.sub(decayed, r.change);
  const after = opt.after ? opt.after(next, optState, h, t) : {};
  return { theta: next, optState: { ...u.state, ...after }, ruleState: r.state };
}
