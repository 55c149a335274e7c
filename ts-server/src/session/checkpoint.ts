// The checkpoint codec of a session: which tensors a checkpoint carries
// (slot "" is the parameter, "rule.x" a rule slot, anything else an
// optimizer slot) and the all-or-nothing check of an import.
import type { ParamState, Slot } from '../engine/engine';
import { slotShape } from '../engine/slots';
import { FailedPrecondition, InvalidArgument } from '../errors';
import { optimizerOf, specJson, type ResolvedSpec } from '../registry';

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

/** Every tensor of one parameter, parameter first (copies: a checkpoint outlives later steps). */
export function* paramTensors(id: string, p: ParamState): Generator<SlotTensor> {
  if (p.theta) yield { paramId: id, slot: '', data: p.theta.read() };
  for (const [k, v] of p.opt) yield { paramId: id, slot: k, data: v.read() };
  for (const [k, v] of p.rule) yield { paramId: id, slot: RULE_PREFIX + k, data: v.read() };
}

/**
 * Checks an import whole: known parameters, slots that this optimizer and
 * rule declare at their sizes, no tensor twice, finiteness, and a header of
 * the same optimizer and rule.
 */
export function checkImport(
  params: Map<string, { state: ParamState; size: number; shape: number[]; group: string }>,
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
    // Only the slots this optimizer and rule declare, each at its size: a
    // checkpoint of another algorithm is refused here, not at the next step.
    let want = p.size;
    if (t.slot !== '') {
      const rule = t.slot.startsWith(RULE_PREFIX);
      const opt = optimizerOf(current, p.group);
      const decls = rule ? current.rule.slots : opt.slots;
      const name = rule ? t.slot.slice(RULE_PREFIX.length) : t.slot;
      const decl = decls.find((d) => d.name === name);
      if (!decl) {
        const known = [...opt.slots.map((d) => d.name), ...current.rule.slots.map((d) => RULE_PREFIX + d.name)];
        throw new InvalidArgument(
          `${where}: not a state slot of ${opt.name} with the ${current.rule.name} rule (its slots: ${known.join(', ') || 'none'})`,
        );
      }
      const shape = slotShape(decl, p.shape);
      if (shape === null)
        throw new InvalidArgument(
          `${where}: ${current.optimizer.name} keeps no '${name}' for a parameter of shape ${JSON.stringify(p.shape)}`,
        );
      want = shape.reduce((a, b) => a * b, 1);
    }
    if (t.data.length !== want) throw new InvalidArgument(`${where}: ${t.data.length} elements, expected ${want}`);
    checkFinite(t.data, where);
  }
  const groupOpts = (x: ResolvedSpec) => JSON.stringify(Object.entries(specJson(x).group_optimizers ?? {}).sort());
  if (header?.spec && groupOpts(header.spec) !== groupOpts(current)) {
    throw new FailedPrecondition(
      `header.spec: checkpoint's groups have optimizers ${groupOpts(header.spec)}, the session's ${groupOpts(current)}`,
    );
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
