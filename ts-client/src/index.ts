export { MurClient, MurSession, StepStream, type ParamInit, type Spec, type Values, type Overrides, type SlotValues } from './client';
export * from './errors';
