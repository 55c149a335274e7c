// The two kinds of pieces of the framework (docs/update-rules.md, section 1), in
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
export type HyperValue = number | boolean | [number, number] | [number | null, number] | [number, number, number] | string;

/** Resolved hyperparameters of one group: optimizer's and rule's together. */
export type Hypers = Record<string, HyperValue>;

/** One entry of an optimizer's or a rule's hyperparameter table. */
export interface HyperSpec {
  name: string;
  /** 'triple': three numbers (Muon's ns_coefficients); 'choice': one of `choices` (null in a spec: the default). */
  type: 'number' | 'boolean' | 'pair' | 'triple' | 'choice';
  /** The strings a 'choice' takes, in the order the native engine numbers them. */
  choices?: readonly string[];
  /** A number that must be a whole number (Muon's ns_steps). */
  integer?: boolean;
  /** torch's default; `undefined` (and no defaultFrom) means required (e.g. SGD's lr). */
  default?: HyperValue;
  /** When not given, takes the resolved value of this other hyperparameter (lr_out: 'lr'). */
  defaultFrom?: string;
  /** With defaultFrom: the default is this factor times that value (lr_out: 10 x lr). */
  defaultFactor?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  /** A pair whose two numbers have bounds of their own (Rprop's etas: (0, 1) and (1, inf)); each overrides the shared ones. */
  items?: [ItemBounds, ItemBounds];
  description: string;
  /** Fixed at session creation: a step override may not change it. */
  fixed?: boolean;
}

/** The bounds of one number of a pair. */
export type ItemBounds = Pick<HyperSpec, 'minimum' | 'maximum' | 'exclusiveMinimum' | 'exclusiveMaximum'> & {
  /** This number may be null (Adafactor's eps1: None, the float32 machine epsilon). */
  nullable?: boolean;
};

/** Named state tensors of one parameter, e.g. {exp_avg, exp_avg_sq}. */
export type State = Record<string, tf.Tensor>;

/** How a state slot starts. */
export type SlotInit =
  /** every element this value */
  | { fill: number }
  /** every element the value of this hyperparameter */
  | { fillFrom: string }
  /** a copy of the first gradient that uses it (SGD's momentum buffer) */
  | { copyOfGrad: true }
  /** one element: rms(theta at creation) times this hyperparameter (Madam's bound) */
  | { rmsTimes: string }
  /** a copy of theta at creation (Schedule-Free's z: z_0 = x_0 = y_0) */
  | { copyOfTheta: true };

/**
 * One state slot of an optimizer or a rule. The list is positional: the
 * native engine's kernels take the slots in this order (checked against the
 * addon's own list when it loads).
 */
export interface SlotDecl {
  name: string;
  init: SlotInit;
  /** One element per parameter instead of one per element. */
  scalar?: boolean;
  /**
   * Never negative (exp_avg_sq, sum, ...): q8 state stores it with the
   * unsigned map, twice as fine (engine/q8.ts). Default: signed. The native
   * addon's descriptor must agree.
   */
  nonNegative?: boolean;
  /**
   * Kept float32 whatever the session's state_dtype: not a moment but the
   * iterate the rule acts on (Schedule-Free's z), or statistics of O(rows +
   * cols) (Adafactor's). The native addon's descriptor must agree (its
   * wide_slots).
   */
  float32?: boolean;
  /** The slot exists only with these hyperparameters (default: always). */
  when?: (h: Hypers) => boolean;
  /**
   * The slot's shape for a parameter of this shape, or null where the slot
   * does not exist for it (Adafactor: row_var [..., R, 1] and col_var
   * [..., 1, C] for >= 2 dims, variance for vectors). Default: the
   * parameter's shape ([1] when scalar).
   */
  shape?: (param: number[]) => number[] | null;
}

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
  /** The state slots of one parameter, created by the engine when first needed. */
  slots: SlotDecl[];
  /**
   * Row-sparse gradients (docs/data-path.md): 'only' takes nothing else
   * (SparseAdam), a function says why these hyperparameters refuse them ('':
   * taken); absent, they are refused. With rows, `update` sees the touched
   * rows of the gradient, theta and every non-scalar slot, as a dense step.
   */
  sparse?: 'only' | ((h: Hypers) => string);
  /**
   * One step for one parameter. `t` counts this parameter's steps from 1.
   * Runs inside tf.tidy: allocate freely, return what must survive.
   */
  update(g: tf.Tensor, theta: tf.Tensor, state: State, h: Hypers, t: number): OptimizerUpdate;
  /**
   * For optimizers whose state follows the new parameter (ASGD's average):
   * called after the rule with theta_t and the state as it was before this
   * step's `update`; returns the slots it changes. Runs inside tf.tidy.
   */
  after?(theta: tf.Tensor, state: State, h: Hypers, t: number): State;
  /**
   * Schedule-Free: the rule acts on this slot (z) instead of theta, and
   * `combine` gives the new theta from theta, z before and z after the rule
   * and the state as it was before this step's `update` (docs/update-rules.md,
   * schedule_free_adamw). `update` still reads theta (the gradient's point y)
   * and returns d for z. Runs inside tf.tidy.
   */
  ruleOn?: {
    slot: string;
    combine(theta: tf.Tensor, z: tf.Tensor, zNew: tf.Tensor, before: State, h: Hypers, t: number): tf.Tensor;
  };
  /**
   * Steps through the client's closure (L-BFGS): the session runs it over all
   * parameters as one vector (session/lbfgs.ts), in TypeScript on every
   * engine; it has no engine kernel and `update` is never called.
   */
  closure?: true;
  /** Why a parameter of this shape cannot use this optimizer (Muon: 2-D only), or undefined. */
  refuseShape?(shape: readonly number[]): string | undefined;
}

export interface RuleDef {
  name: string;
  description: string;
  hypers: HyperSpec[];
  /** Rule state of one parameter (e.g. Madam's bound from theta_0). */
  slots: SlotDecl[];
  /**
   * The change xi that the step subtracts: theta_t = theta_{t-1} - xi
   * (docs/update-rules.md, section 1), and the rule's new state. It reads its
   * own rates from `h`; `scale` multiplies lr and lr_out, never lr_in. A rule never
   * subtracts itself: the sign lives in engine/step.ts alone. Runs inside
   * tf.tidy.
   */
  apply(theta: tf.Tensor, d: tf.Tensor, scale: number, h: Hypers, state: State): { change: tf.Tensor; state: State };
}
