// OptimizerSpec on the wire <-> the JSON shape the schema validates.
import type { OptimizerSpec } from '../../generated/mur/v1/optimizer';
import type { ResolvedSpec, SpecJson } from '../registry';

/** The wire spec as JSON; absent parts stay absent so the schema names them. */
export function specFromWire(s: OptimizerSpec): SpecJson {
  const json: SpecJson = { optimizer: s.optimizer, rule: s.rule };
  if (s.defaults) json.defaults = s.defaults;
  if (s.groups && Object.keys(s.groups).length) {
    json.groups = Object.fromEntries(Object.entries(s.groups).map(([k, v]) => [k, v ?? {}]));
  }
  const own = s.groupOptimizers?.byGroup ?? {};
  if (Object.keys(own).length) json.group_optimizers = { ...own };
  if (s.stateDtype) json.state_dtype = s.stateDtype; // "" is the default, float32
  if (s.stateSeed) json.state_seed = s.stateSeed;
  return json;
}

export function specToWire(s: ResolvedSpec): OptimizerSpec {
  return {
    optimizer: s.optimizer.name,
    rule: s.rule.name,
    defaults: { ...s.defaults },
    groups: { ...s.groups },
    groupOptimizers: { byGroup: Object.fromEntries(Object.entries(s.groupOptimizers).map(([g, o]) => [g, o.name])) },
    stateDtype: s.state.dtype,
    stateSeed: s.state.seed,
  };
}

/** Overrides maps arrive with possibly undefined values. */
export function overridesFromWire(o: { [k: string]: { [k: string]: unknown } | undefined }): Record<string, Record<string, unknown>> {
  return Object.fromEntries(Object.entries(o ?? {}).map(([k, v]) => [k, v ?? {}]));
}
