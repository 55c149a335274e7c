export { MurClient } from './client';
export { MurSession } from './session';
export { StepStream } from './stream';
export type { ClientOptions, TlsOptions } from './connection';
export type { Checkpoint, ParamInit, SessionOptions, Transport, Spec, Values, Overrides, SlotValues, Hypers } from './types';
export * from './errors';
