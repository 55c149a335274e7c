// GetCapabilities: read off the registry, so it never advertises what the code lacks.
import * as fs from 'fs';
import * as path from 'path';
import type { Capabilities, ComponentInfo, HyperparameterInfo } from '../../../generated/mur/v1/optimizer';
import { installedBackends } from '../../engine/backend';
import { currentEngine } from '../../engine/engine';
import { STATE_DTYPES } from '../../engine/stateDtype';
import type { HyperSpec } from '../../engine/types';
import { OPTIMIZERS } from '../../optimizers';
import { specSchema } from '../../registry';
import { RULES } from '../../rules';
import { SUPPORTED_DTYPES } from '../../wire/tensors';
import type { ServerContext } from '../context';

const VERSION = (JSON.parse(fs.readFileSync(path.join(__dirname, '../../../../package.json'), 'utf8')) as { version: string }).version;

function hyperInfo(h: HyperSpec): HyperparameterInfo {
  return {
    name: h.name,
    type: h.type,
    defaultValue: h.default ?? null,
    minimum: h.minimum,
    maximum: h.maximum,
    exclusiveMinimum: h.exclusiveMinimum,
    exclusiveMaximum: h.exclusiveMaximum,
    description: h.defaultFrom
      ? `${h.description} (default: ${h.defaultFactor !== undefined ? `${h.defaultFactor} x ` : 'the value of '}${h.defaultFrom})`
      : h.description,
    fixed: h.fixed ?? false,
    choices: [...(h.choices ?? [])],
  };
}

const component = (c: { name: string; description: string; hypers: HyperSpec[] }): ComponentInfo => ({
  name: c.name,
  description: c.description,
  hyperparameters: c.hypers.map(hyperInfo),
});

export function getCapabilities(ctx: ServerContext): Capabilities {
  return {
    optimizers: OPTIMIZERS.map(component),
    rules: RULES.map(component),
    backend: ctx.backend,
    availableBackends: installedBackends(),
    dtypes: SUPPORTED_DTYPES,
    maxMessageBytes: ctx.maxMessageBytes,
    chunkBytes: ctx.chunkBytes,
    serverVersion: VERSION,
    specSchemaJson: JSON.stringify(specSchema()),
    transports: ['grpc', ...(currentEngine().createArena ? ['shm'] : []), ...(ctx.dataPort ? ['tcp'] : [])],
    dataPort: ctx.dataPort ?? 0,
    stateDtypes: [...STATE_DTYPES],
    storedStateDtypes: [...currentEngine().storedStateDtypes],
  };
}
