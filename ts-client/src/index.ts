export { MurClient } from './client';
export { MurSession } from './session';
export { StepStream } from './stream';
export type { ClientOptions, TlsOptions } from './connection';
export type { Checkpoint, ParamInit, SessionOptions, Transport, Spec, Values, Overrides, SlotValues, Hypers, StateDtype } from './types';
export type { RowGrad } from './rows';
export type { Closure } from './closure';
export * from './errors';
