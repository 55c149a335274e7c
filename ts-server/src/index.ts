// Public entry points of the mur server package.
export { initBackend, availableBackends, type BackendName } from './engine/backend';
export { startServer, type RunningServer, type ServerOptions } from './grpc/server';
export { OPTIMIZERS } from './optimizers';
export { RULES } from './rules';
export { resolveSpec, specSchema, type SpecJson } from './registry';
export { Session } from './session/session';
