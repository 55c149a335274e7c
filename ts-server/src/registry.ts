// Names -> optimizers and rules, and the one JSON Schema of an optimizer spec,
// generated from their hyperparameter tables (so GetCapabilities, the gRPC API
// and the CLI's --config file can never disagree).
import Ajv2020, { type ErrorObject } from 'ajv/dist/2020';
import type { HyperSpec, Hypers, HyperValue, ItemBounds, OptimizerDef, RuleDef } from './engine/types';
import { InvalidArgument } from './errors';
import { OPTIMIZERS } from './optimizers';
import { RULES } from './rules';

/** An optimizer spec as JSON: the --config file, or OptimizerSpec on the wire. */
export interface SpecJson {
  optimizer: string;
  rule: string;
  defaults?: Record<string, unknown>;
  groups?: Record<string, Record<string, unknown>>;
}

/** A spec whose every group has all its hyperparameters. */
export interface ResolvedSpec {
  optimizer: OptimizerDef;
  rule: RuleDef;
  /** The hyperparameters as given (defaults and per group), for export. */
  defaults: Record<string, HyperValue>;
  groups: Record<string, Record<string, HyperValue>>;
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
  const s: Record<string, unknown> = { type: 'number' };
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
      return { ...base, ...numberSchema(h) };
    case 'pair': {
      const both = numberSchema(h);
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

/** Throws InvalidArgument naming the first bad field and its value. */
export function checkSpecJson(spec: unknown, prefix = ''): asserts spec is SpecJson {
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
  const table = hyperTable(spec.optimizer, spec.rule);
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
      out[h.name] = h.defaultFactor !== undefined && typeof from === 'number' ? h.defaultFactor * from : from;
    } else {
      const where = group === '' ? 'defaults' : `groups.${group}`;
      throw new InvalidArgument(`${where}.${h.name}: required by ${spec.optimizer.name} with the ${spec.rule.name} rule`);
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
  };
  for (const g of groupsInUse) resolveGroup(spec, g);
  return spec;
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
  const json = { optimizer: spec.optimizer.name, rule: spec.rule.name, defaults: spec.defaults, groups };
  const next = resolveSpec(json, groupsInUse);
  for (const g of groupsInUse) {
    const before = resolveGroup(spec, g);
    const after = resolveGroup(next, g);
    for (const h of hyperTable(spec.optimizer, spec.rule)) {
      if (h.fixed && JSON.stringify(before[h.name]) !== JSON.stringify(after[h.name])) {
        throw new InvalidArgument(
          `group_overrides.${g || '""'}.${h.name}: ${JSON.stringify(after[h.name])} cannot change after session creation (was ${JSON.stringify(before[h.name])})`,
        );
      }
    }
  }
  return next;
}
