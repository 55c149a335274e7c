// The tfjs engine: parameters and slots as tf.Variables on the active tfjs
// backend (tensorflow, tensorflow-gpu, wasm or cpu). A step computes every
// new tensor inside tf.tidy and only then assigns, so it is all-or-nothing.
import { createHash } from 'crypto';
import * as tf from '@tensorflow/tfjs-core';
import type { Engine, EngineMemory, Slot, StepJob } from './engine';
import { num } from './hypers';
import { stepRows } from './rows';
import { slotShape } from './slots';
import { stepParam } from './step';
import type { Hypers, OptimizerDef, RuleDef, SlotDecl, State } from './types';

class TfSlot implements Slot {
  constructor(readonly variable: tf.Variable) {}
  get size(): number {
    return this.variable.size;
  }
  view(): Float32Array {
    return this.variable.dataSync() as Float32Array;
  }
  read(): Float32Array {
    return this.variable.dataSync() as Float32Array; // dataSync copies
  }
}

const tensorOf = (s: Slot) => (s as TfSlot).variable;

/** A declared slot's first value (inside tf.tidy); null for copyOfGrad, which the optimizer makes itself. */
export function initialSlot(decl: SlotDecl, theta: tf.Tensor, h: Hypers): tf.Tensor | null {
  const i = decl.init;
  if ('copyOfGrad' in i) return null;
  if ('copyOfTheta' in i) return tf.clone(theta);
  if ('rmsTimes' in i) return tf.reshape(tf.mul(tf.sqrt(tf.mean(tf.square(theta))), num(h, i.rmsTimes)), [1]);
  const v = 'fill' in i ? i.fill : num(h, i.fillFrom);
  return tf.fill(slotShape(decl, theta.shape)!, v);
}

/** The declared slots missing from `have`, created (inside tf.tidy). */
export function missingSlots(decls: SlotDecl[], have: Record<string, unknown>, theta: tf.Tensor, h: Hypers): State {
  const out: State = {};
  for (const d of decls) {
    if (d.name in have || (d.when && !d.when(h)) || slotShape(d, theta.shape) === null) continue;
    const t = initialSlot(d, theta, h);
    if (t) out[d.name] = t;
  }
  return out;
}

export class TfjsEngine implements Engine {
  /** bfloat16 and q8 state are accepted and kept in float32 (tfjs has neither dtype): the step is the float32 one. */
  readonly storedStateDtypes = ['float32'] as const;
  constructor(readonly name: string) {}

  firstNonFinite(a: Float32Array): number {
    for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
    return -1;
  }

  scan(a: Float32Array): { nonFinite: number; digest: string } {
    return {
      nonFinite: this.firstNonFinite(a),
      digest: createHash('sha1')
        .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
        .digest('hex'),
    };
  }

  create(values: Float32Array, shape: number[]): Slot {
    const t = tf.tensor(values, shape, 'float32');
    const v = tf.variable(t, false);
    t.dispose();
    return new TfSlot(v);
  }

  write(slot: Slot, values: Float32Array): void {
    const v = tensorOf(slot);
    tf.tidy(() => v.assign(tf.tensor(values, v.shape, 'float32')));
  }

  dispose(slot: Slot): void {
    tensorOf(slot).dispose();
  }

  step(opt: OptimizerDef, rule: RuleDef, jobs: StepJob[]): void {
    this.stepBatches(rule, [{ opt, jobs }]);
  }

  stepBatches(rule: RuleDef, batches: Array<{ opt: OptimizerDef; jobs: StepJob[] }>): void {
    const jobs = batches.flatMap((b) => b.jobs);
    const opts = batches.flatMap((b) => b.jobs.map(() => b.opt));
    // 1. Compute every new tensor of every batch; nothing is assigned yet.
    const results = tf.tidy(() =>
      jobs.map((j, k) => {
        const opt = opts[k];
        const theta = tensorOf(j.state.theta!);
        const optState: State = Object.fromEntries([...j.state.opt].map(([k, s]) => [k, tensorOf(s)]));
        const ruleState: State = Object.fromEntries([...j.state.rule].map(([k, s]) => [k, tensorOf(s)]));
        const fresh = { opt: missingSlots(opt.slots, optState, theta, j.h), rule: missingSlots(rule.slots, ruleState, theta, j.h) };
        Object.assign(optState, fresh.opt);
        Object.assign(ruleState, fresh.rule);
        const r = j.rows
          ? stepRows(opt, rule, { ...j, rows: j.rows }, theta, optState, ruleState)
          : stepParam(opt, rule, theta, tf.tensor(j.grad, j.shape, 'float32'), optState, ruleState, j.h, j.t);
        return { theta: r.theta, opt: { ...fresh.opt, ...r.optState }, rule: { ...fresh.rule, ...r.ruleState } };
      }),
    );
    // 2. Commit.
    jobs.forEach((j, i) => {
      const r = results[i];
      tensorOf(j.state.theta!).assign(r.theta);
      r.theta.dispose();
      commitSlots(j.state.opt, r.opt);
      commitSlots(j.state.rule, r.rule);
    });
  }

  memory(): EngineMemory {
    const m = tf.memory();
    return { buffers: m.numTensors, bytes: m.numBytes };
  }
}

/** Stores new slot values: assign into an existing Variable, or create one. */
function commitSlots(into: Map<string, Slot>, values: State): void {
  for (const [k, t] of Object.entries(values)) {
    const s = into.get(k);
    const v = s ? tensorOf(s) : undefined;
    if (v === t) continue; // an unchanged slot handed back as it was
    if (v && v.shape.length === t.shape.length && v.shape.every((n, i) => n === t.shape[i])) {
      v.assign(t);
    } else {
      v?.dispose();
      into.set(k, new TfSlot(tf.variable(t, false)));
    }
    t.dispose();
  }
}
