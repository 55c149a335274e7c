// ASGD (torch.optim.ASGD): SGD with a decaying rate eta_t, a decay of theta
// by lambd eta_t, and a running average ax of the iterates. Three slots as
// torch names them: eta and mu (one element each) and ax.
//   g' = g + weight_decay theta
//   d = g',  scale = eta / lr,  decay = 1 - lambd eta     (eta as stored)
//   after the rule:  ax = mu == 1 ? theta_t : ax + mu (theta_t - ax)
//   then:  eta = lr / (1 + lambd lr t)^alpha,  mu = 1 / max(1, t - t0)
// The additive rule subtracts lr (eta / lr) g' = eta g': torch's step, with
// eta from the previous step as torch keeps it (t = 1: lr). The other rules
// get torch's schedule eta / lr on eta and eta_out. At lr = 0 scale is 0.
// eta and mu are read on the host (one sync per parameter and step).
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { num } from '../engine/hypers';
import { lr, weightDecay, withWeightDecay } from './common';

const scalarOf = (t: tf.Tensor) => (t.dataSync() as Float32Array)[0];

export const asgd: OptimizerDef = {
  name: 'asgd',
  description: 'ASGD (torch.optim.ASGD): averaged stochastic gradient descent.',
  hypers: [
    lr(1e-2),
    {
      name: 'lambd',
      type: 'number',
      default: 1e-4,
      minimum: 0,
      description: 'decay term: theta *= 1 - lambd eta, and eta = lr / (1 + lambd lr t)^alpha',
    },
    { name: 'alpha', type: 'number', default: 0.75, minimum: 0, description: 'power of the eta schedule' },
    { name: 't0', type: 'number', default: 1e6, description: 'the step after which averaging starts: mu = 1 / max(1, t - t0)' },
    weightDecay(0),
  ],
  slots: [
    { name: 'eta', init: { fillFrom: 'lr' }, scalar: true },
    { name: 'mu', init: { fill: 1 }, scalar: true },
    { name: 'ax', init: { fill: 0 } },
  ],
  update(g, theta, state, h, t) {
    const lrNow = num(h, 'lr');
    const lambd = num(h, 'lambd');
    const eta = scalarOf(state.eta);
    const next = {
      eta: tf.fill([1], lrNow / Math.pow(1 + lambd * lrNow * t, num(h, 'alpha'))),
      mu: tf.fill([1], 1 / Math.max(1, t - num(h, 't0'))),
    };
    const d = withWeightDecay(g, theta, num(h, 'weight_decay'));
    return { d, scale: lrNow > 0 ? eta / lrNow : 0, decay: 1 - lambd * eta, state: next };
  },
  after(theta, state) {
    const mu = scalarOf(state.mu); // this step's mu: after() sees the state before update()
    return { ax: mu === 1 ? tf.clone(theta) : tf.add(state.ax, tf.mul(tf.sub(theta, state.ax), mu)) };
  },
};
