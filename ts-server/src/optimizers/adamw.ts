// AdamW (torch.optim.AdamW): Adam's direction with decoupled weight decay,
// theta *= 1 - lr * weight_decay before the rule is applied.
import type { OptimizerDef } from '../engine/types';
import { ADAM_SLOTS, adamDirection, AMSGRAD } from './adam';
import { betas, eps, EPS_BEFORE_CORRECTION, lr, weightDecay } from './common';
import { num } from '../engine/hypers';

export const adamw: OptimizerDef = {
  name: 'adamw',
  description: 'AdamW (torch.optim.AdamW): Adam with decoupled weight decay.',
  hypers: [lr(1e-3), betas(0.9, 0.999), eps(1e-8), weightDecay(1e-2, true), AMSGRAD, EPS_BEFORE_CORRECTION],
  slots: ADAM_SLOTS,
  update: (g, _theta, state, h, t) => ({
    ...adamDirection(g, state, h, t),
    decay: 1 - num(h, 'lr') * num(h, 'weight_decay'),
  }),
};
