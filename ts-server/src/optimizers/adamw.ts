// AdamW (torch.optim.AdamW): Adam's direction with decoupled weight decay,
// theta *= 1 - lr * weight_decay before the rule is applied.
import type { OptimizerDef } from '../engine/types';
import { adamDirection, adamInit, AMSGRAD } from './adam';
import { betas, eps, lr, weightDecay } from './common';

export const adamw: OptimizerDef = {
  name: 'adamw',
  description: 'AdamW (torch.optim.AdamW): Adam with decoupled weight decay.',
  hypers: [lr(1e-3), betas(0.9, 0.999), eps(1e-8), weightDecay(1e-2, true), AMSGRAD],
  init: adamInit,
  update: (g, _theta, state, h, t) => ({
    ...adamDirection(g, state, h, t),
    decay: 1 - (h.lr as number) * (h.weight_decay as number),
  }),
};
