// One optimizer session: parameters, optimizer and rule state as tf.Variables,
// per-parameter step counts and the last client step number.
//
// A step is all-or-nothing: everything is validated before any tensor is made,
// every new value is computed inside tf.tidy, and only then is anything
// assigned. A repeated last step number replays the result without stepping.
import * as tf from '@tensorflow/tfjs-core';
import { stepParam } from '../engine/step';
import type { Hypers, State } from '../engine/types';
import { FailedPrecondition, InvalidArgument } from '../errors';
import { resolveGroup, withOverrides, type ResolvedSpec } from '../registry';

export interface ParamDeclaration {
  id: string;
  name: string;
  shape: number[];
  group: string;
  /** Initial values, or null when they come later through importState. */
  values: Float32Array | null;
}

interface Param {
  decl: ParamDeclaration;
  size: number;
  value: tf.Variable | null;
  opt: Map<string, tf.Variable>;
  rule: Map<string, tf.Variable>;
  steps: number;
}

export type Overrides = Record<string, Record<string, unknown>>;

export interface StepResult {
  step: number;
  replayed: boolean;
  /** New values of the parameters of this step, in request order. */
  values: Array<{ id: string; data: Float32Array }>;
}

/** One tensor of a checkpoint: slot "" is the parameter, "rule.x" a rule slot. */
export interface SlotTensor {
  paramId: string;
  slot: string;
  data: Float32Array;
}

export interface SessionHeader {
  spec: ResolvedSpec;
  stepCounts: Map<string, number>;
  lastStep: number;
}

const RULE_PREFIX = 'rule.';
const SLOT_NAME = /^(rule\.)?[A-Za-z_][A-Za-z0-9_]*$/;

export const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** The index of the first NaN or infinity, or -1. */
function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

export function checkFinite(a: Float32Array, what: string): void {
  const i = firstNonFinite(a);
  if (i >= 0) throw new InvalidArgument(`${what}: element ${i} is ${a[i]} (must be finite)`);
}

export class Session {
  readonly id: string;
  private spec: ResolvedSpec;
  private readonly params = new Map<string, Param>();
  private lastStep = 0;
  private lastStepIds: string[] = [];
  private disposed = false;

  constructor(id: string, spec: ResolvedSpec, decls: ParamDeclaration[]) {
    this.id = id;
    const seen = new Set<string>();
    decls.forEach((d, i) => {
      if (!d.id) throw new InvalidArgument(`params[${i}].id: must not be empty`);
      if (seen.has(d.id)) throw new InvalidArgument(`params[${i}].id: duplicate id '${d.id}'`);
      seen.add(d.id);
      if (d.shape.some((n) => !Number.isSafeInteger(n) || n < 0)) {
        throw new InvalidArgument(`params[${i}].shape: ${JSON.stringify(d.shape)} is not a shape`);
      }
      if (d.values && d.values.length !== sizeOf(d.shape)) {
        throw new InvalidArgument(
          `params[${i}] '${d.id}': ${d.values.length} values for shape ${JSON.stringify(d.shape)} (${sizeOf(d.shape)} elements)`,
        );
      }
      if (d.values) checkFinite(d.values, `params[${i}] '${d.id}'`);
    });
    this.spec = resolveGroups(spec, decls);
    for (const d of decls) {
      this.params.set(d.id, {
        decl: d,
        size: sizeOf(d.shape),
        value: d.values ? toVariable(tf.tensor(d.values, d.shape, 'float32')) : null,
        opt: new Map(),
        rule: new Map(),
        steps: 0,
      });
    }
    for (const d of decls) d.values = null; // the session keeps no host copy
  }

  get resolvedSpec(): ResolvedSpec {
    return this.spec;
  }

  paramIds(): string[] {
    return [...this.params.keys()];
  }

  /** The declared shape of a parameter; InvalidArgument (naming `where`) if unknown. */
  shapeOf(id: string, where: string): number[] {
    return this.param(id, where).decl.shape;
  }

  private groups(): Set<string> {
    return new Set([...this.params.values()].map((p) => p.decl.group));
  }

  private param(id: string, where: string): Param {
    const p = this.params.get(id);
    if (!p) throw new InvalidArgument(`${where}: unknown parameter id '${id}'`);
    return p;
  }

  /**
   * Applies one step. `grads` holds one flat gradient per parameter that has
   * one, in the parameter's row-major order.
   */
  step(step: number, grads: Array<{ id: string; data: Float32Array }>, overrides: Overrides = {}): StepResult {
    this.checkOpen();
    if (!Number.isSafeInteger(step) || step < 1) throw new InvalidArgument(`step: ${step} must be a positive integer`);
    if (this.lastStep > 0 && step === this.lastStep) {
      return { step, replayed: true, values: this.lastStepIds.map((id) => ({ id, data: this.read(id) })) };
    }
    if (step < this.lastStep) {
      throw new FailedPrecondition(`step: ${step} is before the last applied step ${this.lastStep}`);
    }
    // 1. Validate everything.
    const spec = Object.keys(overrides).length ? withOverrides(this.spec, overrides, this.groups()) : this.spec;
    for (const g of Object.keys(overrides)) {
      if (!this.groups().has(g)) throw new InvalidArgument(`group_overrides: no parameter is in group '${g}'`);
    }
    const seen = new Set<string>();
    const work = grads.map((g, i) => {
      const p = this.param(g.id, `grads[${i}]`);
      if (seen.has(g.id)) throw new InvalidArgument(`grads[${i}]: parameter '${g.id}' appears twice`);
      seen.add(g.id);
      if (!p.value) throw new FailedPrecondition(`grads[${i}]: parameter '${g.id}' has no values yet (send them with ImportState)`);
      if (g.data.length !== p.size) {
        throw new InvalidArgument(`grads[${i}] '${g.id}': ${g.data.length} elements, parameter has ${p.size} (shape ${JSON.stringify(p.decl.shape)})`);
      }
      checkFinite(g.data, `grads[${i}] '${g.id}'`);
      return { p, g: g.data };
    });
    // 2. Compute every new tensor; nothing is assigned yet.
    const hypers = new Map<string, Hypers>();
    const hyp = (group: string) => {
      if (!hypers.has(group)) hypers.set(group, resolveGroup(spec, group));
      return hypers.get(group)!;
    };
    const results = tf.tidy(() =>
      work.map(({ p, g }) => {
        const h = hyp(p.decl.group);
        const theta = p.value!;
        const optState: State = Object.fromEntries(p.opt);
        const ruleState: State = Object.fromEntries(p.rule);
        const fresh = { opt: {} as State, rule: {} as State };
        if (p.steps === 0) {
          for (const [k, v] of Object.entries(spec.optimizer.init(theta, h))) if (!(k in optState)) optState[k] = fresh.opt[k] = v;
          for (const [k, v] of Object.entries(spec.rule.init(theta, h))) if (!(k in ruleState)) ruleState[k] = fresh.rule[k] = v;
        }
        const gt = tf.tensor(g, p.decl.shape, 'float32');
        const r = stepParam(spec.optimizer, spec.rule, theta, gt, optState, ruleState, h, p.steps + 1);
        return { theta: r.theta, opt: { ...fresh.opt, ...r.optState }, rule: { ...fresh.rule, ...r.ruleState } };
      }),
    );
    // 3. Commit.
    work.forEach(({ p }, i) => {
      const r = results[i];
      p.value!.assign(r.theta);
      r.theta.dispose();
      commitSlots(p.opt, r.opt);
      commitSlots(p.rule, r.rule);
      p.steps += 1;
    });
    this.spec = spec;
    this.lastStep = step;
    this.lastStepIds = work.map(({ p }) => p.decl.id);
    return { step, replayed: false, values: this.lastStepIds.map((id) => ({ id, data: this.read(id) })) };
  }

  private read(id: string): Float32Array {
    return this.params.get(id)!.value!.dataSync() as Float32Array;
  }

  header(): SessionHeader {
    this.checkOpen();
    return {
      spec: this.spec,
      stepCounts: new Map([...this.params].map(([id, p]) => [id, p.steps])),
      lastStep: this.lastStep,
    };
  }

  /** Every tensor of the session, parameters first, in a stable order. */
  *exportTensors(): Generator<SlotTensor> {
    this.checkOpen();
    for (const [id, p] of this.params) {
      if (p.value) yield { paramId: id, slot: '', data: p.value.dataSync() as Float32Array };
      for (const [k, v] of p.opt) yield { paramId: id, slot: k, data: v.dataSync() as Float32Array };
      for (const [k, v] of p.rule) yield { paramId: id, slot: RULE_PREFIX + k, data: v.dataSync() as Float32Array };
    }
  }

  /**
   * Replaces what a checkpoint carries, all or nothing: every tensor is
   * checked before any is assigned. Slots not sent keep their values.
   */
  importState(header: Partial<SessionHeader> | undefined, tensors: SlotTensor[]): number {
    this.checkOpen();
    const seen = new Set<string>();
    for (const [i, t] of tensors.entries()) {
      const p = this.param(t.paramId, `chunk for tensor ${i}`);
      const where = `'${t.paramId}' slot '${t.slot}'`;
      if (t.slot !== '' && !SLOT_NAME.test(t.slot)) throw new InvalidArgument(`${where}: not a slot name`);
      if (seen.has(`${t.paramId}\0${t.slot}`)) throw new InvalidArgument(`${where}: sent twice`);
      seen.add(`${t.paramId}\0${t.slot}`);
      const existing = this.slot(p, t.slot);
      const want = existing ? existing.size : t.slot === '' ? p.size : undefined;
      if (want !== undefined ? t.data.length !== want : t.data.length !== p.size && t.data.length !== 1) {
        throw new InvalidArgument(`${where}: ${t.data.length} elements, expected ${want ?? `${p.size} or 1`}`);
      }
      checkFinite(t.data, where);
    }
    if (header?.spec) {
      if (header.spec.optimizer !== this.spec.optimizer || header.spec.rule !== this.spec.rule) {
        throw new FailedPrecondition(
          `header.spec: checkpoint is ${header.spec.optimizer.name}/${header.spec.rule.name}, session is ${this.spec.optimizer.name}/${this.spec.rule.name}`,
        );
      }
    }
    for (const [id, n] of header?.stepCounts ?? []) {
      this.param(id, 'header.step_counts');
      if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgument(`header.step_counts['${id}']: ${n}`);
    }
    const spec = header?.spec ? resolveGroups(header.spec, [...this.params.values()].map((p) => p.decl)) : this.spec;
    // Commit.
    for (const t of tensors) {
      const p = this.params.get(t.paramId)!;
      const shape = t.slot === '' || t.data.length === p.size ? p.decl.shape : [t.data.length];
      const value = tf.tensor(t.data, shape, 'float32');
      if (t.slot === '') {
        if (p.value) p.value.assign(value);
        else p.value = tf.variable(value, false);
        value.dispose();
        continue;
      }
      const [map, name] = t.slot.startsWith(RULE_PREFIX) ? [p.rule, t.slot.slice(RULE_PREFIX.length)] : [p.opt, t.slot];
      commitSlots(map, { [name]: value });
    }
    this.spec = spec;
    for (const [id, n] of header?.stepCounts ?? []) this.params.get(id)!.steps = n;
    if (header?.lastStep !== undefined) {
      this.lastStep = header.lastStep;
      this.lastStepIds = [];
    }
    return tensors.length;
  }

  private slot(p: Param, slot: string): tf.Variable | null | undefined {
    if (slot === '') return p.value;
    return slot.startsWith(RULE_PREFIX) ? p.rule.get(slot.slice(RULE_PREFIX.length)) : p.opt.get(slot);
  }

  private checkOpen(): void {
    if (this.disposed) throw new FailedPrecondition(`session ${this.id} is closed`);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const p of this.params.values()) {
      p.value?.dispose();
      for (const v of p.opt.values()) v.dispose();
      for (const v of p.rule.values()) v.dispose();
    }
    this.params.clear();
  }
}

/** A Variable holding `t`'s values; `t` itself is disposed. */
function toVariable(t: tf.Tensor): tf.Variable {
  const v = tf.variable(t, false);
  t.dispose();
  return v;
}

/** Checks that every group of these parameters resolves under `spec`. */
function resolveGroups(spec: ResolvedSpec, decls: ParamDeclaration[]): ResolvedSpec {
  for (const g of new Set(decls.map((d) => d.group))) resolveGroup(spec, g);
  return spec;
}

/** Stores new slot values: assign into an existing Variable, or create one. */
function commitSlots(into: Map<string, tf.Variable>, values: State): void {
  for (const [k, t] of Object.entries(values)) {
    const v = into.get(k);
    if (v === t) continue; // an unchanged slot handed back as it was
    if (v && v.shape.length === t.shape.length && v.shape.every((n, i) => n === t.shape[i])) {
      v.assign(t);
    } else {
      v?.dispose();
      into.set(k, tf.variable(t, false));
    }
    t.dispose();
  }
}
