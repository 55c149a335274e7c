// A row-sparse job on tfjs tensors: the touched rows of theta and of every
// non-scalar slot gathered, stepped as a dense [nnz, *row_shape] parameter
// (engine/step.ts), and written back at their rows with tf.where, so every
// other row keeps its exact bits. The native engine runs the fused kernel on
// those rows in place instead (native/src/optimizers/rows-inl.h).
import * as tf from '@tensorflow/tfjs-core';
import type { StepJob } from './engine';
import { stepParam, type ParamStepResult } from './step';
import type { OptimizerDef, RuleDef, SlotDecl, State } from './types';

/** The slots of `decls` that hold one value per element (gathered and scattered by row). */
const perElement = (decls: SlotDecl[], state: State, theta: tf.Tensor) =>
  new Set(decls.filter((d) => !d.scalar && state[d.name] && state[d.name].size === theta.size).map((d) => d.name));

/** One row-sparse job's new theta and slots, whole (inside tf.tidy); `optState`/`ruleState` hold every slot, fresh ones too. */
export function stepRows(
  opt: OptimizerDef,
  rule: RuleDef,
  j: StepJob & { rows: Uint32Array },
  theta: tf.Tensor,
  optState: State,
  ruleState: State,
): ParamStepResult {
  const nnz = j.rows.length;
  if (nnz === 0) return { theta: tf.clone(theta), optState: {}, ruleState: {} };
  const idx = tf.tensor1d(Int32Array.from(j.rows), 'int32');
  const rowsOf = (decls: SlotDecl[], state: State) => {
    const keep = perElement(decls, state, theta);
    const out: State = {};
    for (const [k, v] of Object.entries(state)) out[k] = keep.has(k) ? tf.gather(v, idx) : v;
    return { out, keep };
  };
  const o = rowsOf(opt.slots, optState);
  const r = rowsOf(rule.slots, ruleState);
  const g = tf.tensor(j.grad, [nnz, ...j.shape.slice(1)], 'float32');
  const next = stepParam(opt, rule, tf.gather(theta, idx), g, o.out, r.out, j.h, j.t);
  // [n, 1, ...]: broadcast along each row.
  const hit = tf.scatterND(tf.expandDims(idx, 1), tf.ones([nnz], 'int32'), [j.shape[0]]);
  const mask = tf.reshape(tf.greater(hit, 0), [j.shape[0], ...j.shape.slice(1).map(() => 1)]);
  const back = (whole: tf.Tensor, rows: tf.Tensor) => tf.where(mask, tf.scatterND(tf.expandDims(idx, 1), rows, whole.shape), whole);
  const scatter = (keep: Set<string>, before: State, after: State): State =>
    Object.fromEntries(Object.entries(after).map(([k, v]) => [k, keep.has(k) ? back(before[k], v) : v]));
  return {
    theta: back(theta, next.theta),
    optState: scatter(o.keep, optState, next.optState),
    ruleState: scatter(r.keep, ruleState, next.ruleState),
  };
}
