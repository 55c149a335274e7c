export { MurClient, MurSession, StepStream, type Checkpoint, type ClientOptions, type TlsOptions, type ParamInit, type SessionOptions, type Transport, type Spec, type Values, type Overrides, type SlotValues } from './client';
export * from './errors';
