// The checkpoint codec of a session: which tensors a checkpoint carries
// (slot "" is the parameter, "rule.x" a rule slot, anything else an
// optimizer slot) and the all-or-nothing check of an import.
import type { ParamState, Slot } from '../engine/engine';
import { FailedPrecondition, InvalidArgument } from '../errors';
import type { ResolvedSpec } from '../registry';

/** One tensor of a checkpoint. */
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

export const RULE_PREFIX = 'rule.';
const SLOT_NAME = /^(rule\.)?[A-Za-z_][A-Za-z0-9_]*$/;

/** The map and key a checkpoint slot name refers to ("" is the parameter). */
export function slotRef(p: ParamState, slot: string): { map: Map<string, Slot>; name: string } {
  return slot.startsWith(RULE_PREFIX) ? { map: p.rule, name: slot.slice(RULE_PREFIX.length) } : { map: p.opt, name: slot };
}

export function existingSlot(p: ParamState, slot: string): Slot | null | undefined {
  if (slot === '') return p.theta;
  const r = slotRef(p, slot);
  return r.map.get(r.name);
}

/** Every tensor of one parameter, parameter first (copies: a checkpoint outlives later steps). */
export function* paramTensors(id: string, p: ParamState): Generator<SlotTensor> {
  if (p.theta) yield { paramId: id, slot: '', data: p.theta.read() };
  for (const [k, v] of p.opt) yield { paramId: id, slot: k, data: v.read() };
  for (const [k, v] of p.rule) yield { paramId: id, slot: RULE_PREFIX + k, data: v.read() };
}

/**
 * Checks an import whole: known parameters, slot names, sizes (an existing
 * slot keeps its size; a new one has the parameter's size or 1), no tensor
 * twice, finiteness, and a header of the same optimizer and rule.
 */
export function checkImport(
  params: Map<string, { state: ParamState; size: number }>,
  current: ResolvedSpec,
  header: Partial<SessionHeader> | undefined,
  tensors: SlotTensor[],
  checkFinite: (a: Float32Array, what: string) => void,
): void {
  const seen = new Set<string>();
  for (const [i, t] of tensors.entries()) {
    const p = params.get(t.paramId);
    if (!p) throw new InvalidArgument(`chunk for tensor ${i}: unknown parameter id '${t.paramId}'`);
    const where = `'${t.paramId}' slot '${t.slot}'`;
    if (t.slot !== '' && !SLOT_NAME.test(t.slot)) throw new InvalidArgument(`${where}: not a slot name`);
    if (seen.has(`${t.paramId}\0${t.slot}`)) throw new InvalidArgument(`${where}: sent twice`);
    seen.add(`${t.paramId}\0${t.slot}`);
    const existing = existingSlot(p.state, t.slot);
    const want = existing ? existing.size : t.slot === '' ? p.size : undefined;
    if (want !== undefined ? t.data.length !== want : t.data.length !== p.size && t.data.length !== 1) {
      throw new InvalidArgument(`${where}: ${t.data.length} elements, expected ${want ?? `${p.size} or 1`}`);
    }
    checkFinite(t.data, where);
  }
  if (header?.spec && (header.spec.optimizer !== current.optimizer || header.spec.rule !== current.rule)) {
    throw new FailedPrecondition(
      `header.spec: checkpoint is ${header.spec.optimizer.name}/${header.spec.rule.name}, session is ${current.optimizer.name}/${current.rule.name}`,
    );
  }
  for (const [id, n] of header?.stepCounts ?? []) {
    if (!params.has(id)) throw new InvalidArgument(`header.step_counts: unknown parameter id '${id}'`);
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgument(`header.step_counts['${id}']: ${n}`);
  }
}
