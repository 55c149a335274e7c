// Every optimizer the service offers, by name. GetCapabilities is read off this list.
import type { OptimizerDef } from '../engine/types';
import { adadelta } from './adadelta';
import { adafactor } from './adafactor';
import { adagrad } from './adagrad';
import { adam } from './adam';
import { adamax } from './adamax';
import { adamw } from './adamw';
import { asgd } from './asgd';
import { lamb } from './lamb';
import { lbfgs } from './lbfgs';
import { lars } from './lars';
import { lion } from './lion';
import { muon } from './muon';
import { nadam } from './nadam';
import { radam } from './radam';
import { rmsprop } from './rmsprop';
import { rprop } from './rprop';
import { scheduleFreeAdamw } from './scheduleFree';
import { sgd } from './sgd';
import { sparseAdam } from './sparseAdam';

export const OPTIMIZERS: readonly OptimizerDef[] = [
  sgd,
  adam,
  adamw,
  adagrad,
  rmsprop,
  adamax,
  nadam,
  radam,
  adadelta,
  lion,
  rprop,
  asgd,
  lamb,
  lars,
  adafactor,
  sparseAdam,
  muon,
  scheduleFreeAdamw,
  lbfgs,
];
