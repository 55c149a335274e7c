// Names -> optimizers and rules, and the one JSON Schema of an optimizer spec,
// generated from their hyperparameter tables (so GetCapabilities, the gRPC API
// and the CLI's --config file can never disagree).
import Ajv2020, { type ErrorObject } from 'ajv/dist/2020';
import type { HyperSpec, Hypers, HyperValue, ItemBounds, OptimizerDef, RuleDef } from './engine/types';
import { STATE_DTYPES, type StateFormat } from './engine/stateDtype';
import { InvalidArgument } from './errors';
import { OPTIMIZERS } from './optimizers';
import { RULES } from './rules';

/** An optimizer spec as JSON: the --config file, or OptimizerSpec on the wire. */
export interface SpecJson {
  optimizer: string;
  rule: string;
  defaults?: Record<string, unknown>;
  groups?: Record<string, Record<string, unknown>>;
  /** A group's own optimizer, by group name (Muon for matrices, AdamW for the rest). */
  group_optimizers?: Record<string, string>;
  /** How per-element optimizer state is stored: "float32" (default), "bfloat16" or "q8" (engine/stateDtype.ts). */
  state_dtype?: string;
  /** The seed of bfloat16 state's stochastic rounding (default 0). */
  state_seed?: number;
}

/** A spec whose every group has all its hyperparameters. */
export interface ResolvedSpec {
  optimizer: OptimizerDef;
  rule: RuleDef;
  /** The hyperparameters as given (defaults and per group), for export. */
  defaults: Record<string, HyperValue>;
  groups: Record<string, Record<string, HyperValue>>;
  /** Groups whose optimizer is not `optimizer`. */
  groupOptimizers: Record<string, OptimizerDef>;
  /** state_dtype and state_seed, fixed at session creation. */
  state: StateFormat;
}

/** The optimizer of one group. */
export function optimizerOf(spec: ResolvedSpec, group: string): OptimizerDef {
  return spec.groupOptimizers[group] ?? spec.optimizer;
}

/** True when some group has an optimizer of its own (a mixed session). */
export function isMixed(spec: ResolvedSpec): boolean {
  return Object.values(spec.groupOptimizers).some((o) => o !== spec.optimizer);
}

export function findOptimizer(name: string): OptimizerDef | undefined {
  return OPTIMIZERS.find((o) => o.name === name);
}
export function findRule(name: string): RuleDef | undefined {
  return RULES.find((r) => r.name === name);
}

/** The hyperparameter table of one optimizer x rule pair. */
export function hyperTable(opt: OptimizerDef, rule: RuleDef): HyperSpec[] {
  return [...opt.hypers, ...rule.hypers];
}

function numberSchema(h: ItemBounds): Record<string, unknown> {
  const s: Record<string, unknown> = { type: h.nullable ? ['number', 'null'] : 'number' };
  if (h.minimum !== undefined) s.minimum = h.minimum;
  if (h.maximum !== undefined) s.maximum = h.maximum;
  if (h.exclusiveMinimum !== undefined) s.exclusiveMinimum = h.exclusiveMinimum;
  if (h.exclusiveMaximum !== undefined) s.exclusiveMaximum = h.exclusiveMaximum;
  return s;
}

export function hyperSchema(h: HyperSpec): Record<string, unknown> {
  const base = { description: h.description };
  switch (h.type) {
    case 'boolean':
      return { ...base, type: 'boolean' };
    case 'number':
      return { ...base, ...numberSchema(h), ...(h.integer ? { type: 'integer' } : {}) };
    case 'choice':
      return { ...base, enum: [...(h.choices ?? []), null] };
    case 'triple':
      return { ...base, type: 'array', items: numberSchema(h), minItems: 3, maxItems: 3 };
    case 'pair': {
      const both = numberSchema({ ...h, nullable: h.items?.some((b) => b.nullable) });
      const each = h.items ? { prefixItems: h.items.map((b) => numberSchema({ ...h, ...b })) } : {};
      return { ...base, type: 'array', items: both, ...each, minItems: 2, maxItems: 2 };
    }
  }
}

function hypersObject(table: HyperSpec[]): Record<string, unknown> {
  return {
    type: 'object',
    additionalProperties: false,
    properties: Object.fromEntries(table.map((h) => [h.name, hyperSchema(h)])),
  };
}

/**
 * The spec schema: one branch per optimizer x rule pair (each with exactly its
 * own hyperparameters), selected by the two names.
 */
export function specSchema(): Record<string, unknown> {
  const branches = [];
  for (const o of OPTIMIZERS) {
    for (const r of RULES) {
      const hyp = hypersObject(hyperTable(o, r));
      branches.push({
        if: { properties: { optimizer: { const: o.name }, rule: { const: r.name } } },
        then: { properties: { defaults: hyp, groups: { type: 'object', additionalProperties: hyp } } },
      });
    }
  }
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://mur.dev/schemas/optimizer-spec.json',
    title: 'mur optimizer spec',
    type: 'object',
    required: ['optimizer', 'rule'],
    additionalProperties: false,
    properties: {
      optimizer: { enum: OPTIMIZERS.map((o) => o.name) },
      rule: { enum: RULES.map((r) => r.name) },
      defaults: { type: 'object' },
      groups: { type: 'object', additionalProperties: { type: 'object' } },
      group_optimizers: { type: 'object', additionalProperties: { enum: OPTIMIZERS.map((o) => o.name) } },
      state_dtype: {
        enum: [...STATE_DTYPES],
        description:
          'How per-element optimizer state is stored: float32 (default), bfloat16 (computed in float32, stored with seeded stochastic rounding) or q8 (8-bit block-quantised: one byte per element and one float32 absmax per 256, dynamic map; computed in float32). Every optimizer takes both; the Schedule-Free iterate z and the Adafactor row and column statistics stay float32. Engines that cannot store one keep float32: GetCapabilities.stored_state_dtypes',
      },
      state_seed: {
        type: 'integer',
        minimum: 0,
        maximum: 0xffffffff,
        description: 'The seed of bfloat16 state rounding (default 0): the same seed, gradients and steps give the same state',
      },
    },
    allOf: branches,
  };
}

const ajv = new Ajv2020({ allErrors: false, strict: false });
const validateSpecJson = ajv.compile(specSchema());

function valueAt(root: unknown, pointer: string): unknown {
  let cur: unknown = root;
  for (const part of pointer.split('/').slice(1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return cur;
}

/** "defaults.betas[1]" from "/defaults/betas/1". */
function fieldPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : (i === 0 ? '' : '.') + p))
    .join('');
}

function describe(e: ErrorObject, root: unknown, prefix: string): string {
  let path = e.instancePath;
  if (e.keyword === 'additionalProperties') {
    const extra = (e.params as { additionalProperty: string }).additionalProperty;
    path += `/${extra}`;
    return `${prefix}${fieldPath(path)}: unknown hyperparameter or field '${extra}'`;
  }
  if (e.keyword === 'required') {
    return `${prefix}${fieldPath(path) || 'spec'}: missing '${(e.params as { missingProperty: string }).missingProperty}'`;
  }
  const value = JSON.stringify(valueAt(root, path));
  const where = fieldPath(path) || 'spec';
  if (e.keyword === 'enum') {
    const allowed = (e.params as { allowedValues: unknown[] }).allowedValues.join(', ');
    return `${prefix}${where}: unknown value ${value} (one of: ${allowed})`;
  }
  return `${prefix}${where}: ${value} ${e.message}`;
}

/**
 * Throws InvalidArgument naming the first bad field and its value. A group
 * with an optimizer of its own is checked against that optimizer's table
 * (the schema's branch for it), under the same path (groups.<name>.<key>).
 */
export function checkSpecJson(spec: unknown, prefix = ''): asserts spec is SpecJson {
  const s = spec as SpecJson;
  const named = spec !== null && typeof spec === 'object' && s.group_optimizers !== null && typeof s.group_optimizers === 'object';
  const own = named ? Object.entries(s.group_optimizers!).filter(([, o]) => o !== s.optimizer) : [];
  if (own.length === 0 || s.groups === null || typeof s.groups !== 'object') return validate(spec, prefix);
  const rest = { ...s.groups };
  for (const [g] of own) delete rest[g];
  validate({ ...s, groups: rest }, prefix); // the spec's own fields, group_optimizers' names, the other groups
  for (const [g, o] of own) validate({ optimizer: o, rule: s.rule, groups: { [g]: s.groups[g] ?? {} } }, prefix);
}

function validate(spec: unknown, prefix: string): void {
  if (!validateSpecJson(spec)) {
    const errors = validateSpecJson.errors ?? [];
    // The most specific error: skip the "must match then schema" wrappers.
    const e = errors.find((x) => x.keyword !== 'if') ?? errors[0];
    throw new InvalidArgument(describe(e, spec, prefix));
  }
}

/**
 * Every hyperparameter of one group: group value > spec default > table
 * default > the value of its defaultFrom. A missing required one is named.
 */
export function resolveGroup(spec: ResolvedSpec, group: string): Hypers {
  const opt = optimizerOf(spec, group);
  const table = hyperTable(opt, spec.rule);
  const given = { ...spec.defaults, ...(spec.groups[group] ?? {}) };
  const out: Hypers = {};
  for (const h of table) {
    const v = given[h.name] ?? h.default;
    if (v !== undefined) out[h.name] = v;
  }
  for (const h of table) {
    if (out[h.name] !== undefined) continue;
    if (h.defaultFrom !== undefined && out[h.defaultFrom] !== undefined) {
      const from = out[h.defaultFrom];
      const v = h.defaultFactor !== undefined && typeof from === 'number' ? h.defaultFactor * from : from;
      // A whole number's default is whole (lbfgs' max_eval: floor(1.25 max_iter), torch's max_iter * 5 // 4).
      out[h.name] = h.integer && typeof v === 'number' ? Math.floor(v) : v;
    } else {
      const where = group === '' ? 'defaults' : `groups.${group}`;
      throw new InvalidArgument(`${where}.${h.name}: required by ${opt.name} with the ${spec.rule.name} rule`);
    }
  }
  return out;
}

/** Validates a spec and checks that every group named by `groupsInUse` resolves. */
export function resolveSpec(json: unknown, groupsInUse: Iterable<string> = ['']): ResolvedSpec {
  checkSpecJson(json);
  const spec: ResolvedSpec = {
    optimizer: findOptimizer(json.optimizer)!,
    rule: findRule(json.rule)!,
    defaults: (json.defaults ?? {}) as Record<string, HyperValue>,
    groups: (json.groups ?? {}) as Record<string, Record<string, HyperValue>>,
    groupOptimizers: Object.fromEntries(
      Object.entries(json.group_optimizers ?? {})
        .filter(([, o]) => o !== json.optimizer)
        .map(([g, o]) => [g, findOptimizer(o)!]),
    ),
    state: { dtype: (json.state_dtype ?? 'float32') as StateFormat['dtype'], seed: json.state_seed ?? 0 },
  };
  for (const g of groupsInUse) resolveGroup(spec, g);
  return spec;
}

/** Refuses a parameter that its group's optimizer cannot take (Muon: 2-D only), by the parameter's name. */
export function checkShapes(spec: ResolvedSpec, decls: ReadonlyArray<{ id: string; name: string; shape: number[]; group: string }>): void {
  decls.forEach((d, i) => {
    const why = optimizerOf(spec, d.group).refuseShape?.(d.shape);
    if (why) throw new InvalidArgument(`params[${i}] '${d.name || d.id}' (shape ${JSON.stringify(d.shape)}): ${why}`);
  });
}

/**
 * The spec after per-group overrides (a learning-rate schedule), validated as
 * a whole; a `fixed` hyperparameter may not change. `spec` is not modified.
 */
export function withOverrides(
  spec: ResolvedSpec,
  overrides: Record<string, Record<string, unknown>>,
  groupsInUse: Iterable<string>,
): ResolvedSpec {
  const groups: Record<string, Record<string, unknown>> = { ...spec.groups };
  for (const [g, o] of Object.entries(overrides)) groups[g] = { ...(groups[g] ?? {}), ...o };
  const json = { ...specJson(spec), groups };
  const next = resolveSpec(json, groupsInUse);
  for (const g of groupsInUse) {
    const before = resolveGroup(spec, g);
    const after = resolveGroup(next, g);
    for (const h of hyperTable(optimizerOf(spec, g), spec.rule)) {
      if (h.fixed && JSON.stringify(before[h.name]) !== JSON.stringify(after[h.name])) {
        throw new InvalidArgument(
          `group_overrides.${g || '""'}.${h.name}: ${JSON.stringify(after[h.name])} cannot change after session creation (was ${JSON.stringify(before[h.name])})`,
        );
      }
    }
  }
  return next;
}

/**
 * A resolved spec as JSON again (group_optimizers only when some group has its own,
 * its state format only where it is not the default).
 */
export function specJson(spec: ResolvedSpec): SpecJson {
  const json: SpecJson = { optimizer: spec.optimizer.name, rule: spec.rule.name, defaults: spec.defaults, groups: spec.groups };
  const own = Object.entries(spec.groupOptimizers);
  if (own.length) json.group_optimizers = Object.fromEntries(own.map(([g, o]) => [g, o.name]));
  if (spec.state.dtype !== 'float32') json.state_dtype = spec.state.dtype;
  if (spec.state.seed !== 0) json.state_seed = spec.state.seed;
  return json;
}
