// LARS (You et al. 2017; torch.optim has none: optax.lars is the reference):
// the weight-decayed gradient scaled per tensor by the trust ratio, then
// momentum on the lr-scaled step, as optax chains them (trace after the lr):
//   u = g + weight_decay theta;  w = u tc ||theta|| / (||u|| + eps)  (trust.ts)
//   buf = momentum buf + lr w;   step = nesterov ? lr w + momentum buf : buf
//   d = step / lr  (0 at lr = 0, as lr_in_momentum: common.ts, perLr),  scale 1
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { flag, num } from '../engine/hypers';
import { eps, perLr, weightDecay, withWeightDecay } from './common';
import { trustRatio } from './trust';

export const lars: OptimizerDef = {
  name: 'lars',
  description: 'LARS (optax.lars): momentum SGD scaled per tensor by the trust ratio tc ||theta|| / (||g|| + eps).',
  hypers: [
    { name: 'lr', type: 'number', minimum: 0, description: 'learning rate (required, as in optax)' },
    weightDecay(0),
    { name: 'trust_coefficient', type: 'number', default: 1e-3, minimum: 0, description: 'tc in tc ||theta|| / (||u|| + eps)' },
    eps(0),
    { name: 'momentum', type: 'number', default: 0.9, minimum: 0, description: 'decay of the trace of lr-scaled steps' },
    { name: 'nesterov', type: 'boolean', default: false, description: 'Nesterov momentum: step = lr w + momentum buf' },
  ],
  slots: [{ name: 'momentum_buffer', init: { fill: 0 } }],
  update(g, theta, state, h) {
    const lrNow = num(h, 'lr');
    const mu = num(h, 'momentum');
    const u = withWeightDecay(g, theta, num(h, 'weight_decay'));
    const lw = tf.mul(tf.mul(u, trustRatio(theta, u, num(h, 'trust_coefficient'), num(h, 'eps'))), lrNow);
    const buf = tf.add(tf.mul(state.momentum_buffer, mu), lw);
    const step = flag(h, 'nesterov') ? tf.add(lw, tf.mul(buf, mu)) : buf;
    return { d: perLr(step, lrNow), scale: 1, state: { momentum_buffer: buf } };
  },
};
