// Every update rule the service offers, by name. GetCapabilities is read off this list.
import type { RuleDef } from '../engine/types';
import { additive } from './additive';

export const RULES: readonly RuleDef[] = [additive];
