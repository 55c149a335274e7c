// The two kinds of pieces of the framework (UPDATE_RULES.md section 1), in
// optax's init/update style:
//  - an Optimizer turns a gradient and its own state into a direction `d` and
//    step-size factors; it never changes the parameter;
//  - a Rule turns the parameter, `d`, the learning rates and the factors into
//    the new parameter; it never sees optimizer state.
// Both are pure: `update`/`apply` return new tensors and never assign. The
// session commits the returned state with Variable.assign only after every
// parameter of the step has been computed, so a step is all-or-nothing.
import type * as tf from '@tensorflow/tfjs-core';

/** A hyperparameter value as it appears in a spec's JSON. */
export type HyperValue = number | boolean | [number, number];

/** Resolved hyperparameters of one group: optimizer's and rule's together. */
export type Hypers = Record<string, HyperValue>;

/** One entry of an optimizer's or a rule's hyperparameter table. */
export interface HyperSpec {
  name: string;
  type: 'number' | 'boolean' | 'pair';
  /** torch's default; `undefined` (and no defaultFrom) means required (e.g. SGD's lr). */
  default?: HyperValue;
  /** When not given, takes the resolved value of this other hyperparameter (lr_out: 'lr'). */
  defaultFrom?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  description: string;
  /** Fixed at session creation: a step override may not change it. */
  fixed?: boolean;
}

/** Named state tensors of one parameter, e.g. {exp_avg, exp_avg_sq}. */
export type State = Record<string, tf.Tensor>;

/** What an optimizer hands to the rule. */
export interface Direction {
  /** Same shape as the parameter. */
  d: tf.Tensor;
  /** Multiplies eta and eta_out, never eta_in (e.g. Adam's 1/bc1). */
  scale: number;
  /**
   * Decoupled weight decay (AdamW, Lion): the parameter is multiplied by this
   * factor before the rule is applied. 1 when absent.
   */
  decay?: number;
}

export interface OptimizerUpdate extends Direction {
  /**
   * New values of the slots this step changed. The session merges them into
   * the parameter's state: a returned slot replaces (or, on its first use,
   * creates) the stored one; a slot not returned keeps its value.
   */
  state: State;
}

export interface OptimizerDef {
  name: string;
  description: string;
  hypers: HyperSpec[];
  /** State slots for one parameter, before its first step. */
  init(theta: tf.Tensor, h: Hypers): State;
  /**
   * One step for one parameter. `t` counts this parameter's steps from 1.
   * Runs inside tf.tidy: allocate freely, return what must survive.
   */
  update(g: tf.Tensor, theta: tf.Tensor, state: State, h: Hypers, t: number): OptimizerUpdate;
}

/** The learning rates a rule sees, with the optimizer's scale applied. */
export interface RuleRates {
  /** Additive learning rate (lr), times scale. */
  eta: number;
  /** Inner learning rate (lr_in), never scaled. */
  etaIn: number;
  /** Outer learning rate (lr_out), times scale. */
  etaOut: number;
  /** Hybrid weight. */
  gamma: number;
}

export interface RuleDef {
  name: string;
  description: string;
  hypers: HyperSpec[];
  /** Rule state for one parameter (e.g. Madam's bound from theta_0). */
  init(theta: tf.Tensor, h: Hypers): State;
  /**
   * The change xi that the step subtracts: theta_t = theta_{t-1} - xi
   * (UPDATE_RULES.md section 1), and the rule's new state. A rule never
   * subtracts itself: the sign lives in engine/step.ts alone. Runs inside
   * tf.tidy.
   */
  apply(theta: tf.Tensor, d: tf.Tensor, rates: RuleRates, h: Hypers, state: State): { change: tf.Tensor; state: State };
}
