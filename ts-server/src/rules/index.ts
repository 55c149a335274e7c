// Every update rule the service offers, by name. GetCapabilities is read off this list.
import type { RuleDef } from '../engine/types';
import { additive } from './additive';
import { expSign } from './expSign';
import { hybrid } from './hybrid';
import { multiplicative } from './multiplicative';

export const RULES: readonly RuleDef[] = [additive, multiplicative, hybrid, expSign];
