// Every optimizer the service offers, by name. GetCapabilities is read off this list.
import type { OptimizerDef } from '../engine/types';
import { sgd } from './sgd';

export const OPTIMIZERS: readonly OptimizerDef[] = [sgd];
