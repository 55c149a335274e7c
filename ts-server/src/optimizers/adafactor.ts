// Adafactor (torch.optim.Adafactor, Shazeer and Stern 2018): the second moment
// of a tensor with >= 2 dims kept as row and column means of g^2 over its last
// two dims (a vector keeps it whole), the update clipped by its RMS, and a
// relative step that follows the parameter's RMS:
//   w = t^beta2_decay                           (1 - beta2_t)
//   >= 2 dims: row_var = lerp(row_var, mean_-1(g^2), w)   [..., R, 1]
//              col_var = lerp(col_var, mean_-2(g^2), w)   [..., 1, C]
//              v = row_var col_var / max(mean_-2(row_var), eps1)
//   vectors:   variance = lerp(variance, g^2, w);  v = variance
//   u = g / sqrt(max(v, eps1^2));  u^ = u / max(1, rms(u) / d)
//   d = max(eps2, rms(theta)) u^,  scale = min(lr, 1/sqrt(t)) / lr (0 at lr = 0)
//   decay = 1 - lr weight_decay                  (rms(theta) before the decay)
// The additive rule subtracts rho max(eps2, rms(theta)) u^: torch's step.
// eps1 null (torch's None) is the float32 machine epsilon (torch: the
// parameter dtype's; the server computes in float32).
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { nullablePair, num } from '../engine/hypers';
import { lr } from './common';

/** torch.finfo(torch.float32).eps: eps1 = None. */
export const FLOAT32_EPS = 2 ** -23;

const rowShape = (s: number[]) => (s.length < 2 ? null : [...s.slice(0, -1), 1]);
const colShape = (s: number[]) => (s.length < 2 ? null : [...s.slice(0, -2), 1, s[s.length - 1]]);
const lerp = (a: tf.Tensor, b: tf.Tensor, w: number) => tf.add(a, tf.mul(tf.sub(b, a), w));
const rms = (x: tf.Tensor) => tf.div(tf.norm(x), Math.sqrt(Math.max(1, x.size)));

export const adafactor: OptimizerDef = {
  name: 'adafactor',
  description: 'Adafactor (torch.optim.Adafactor): factored second moments, RMS clipping and a relative step size.',
  hypers: [
    lr(1e-2),
    { name: 'beta2_decay', type: 'number', default: -0.8, maximum: 0, description: 'tau: the running averages weigh the new g^2 by t^tau' },
    {
      name: 'eps',
      type: 'pair',
      default: [null, 1e-3],
      items: [{ minimum: 0, nullable: true }, { minimum: 0 }],
      description:
        '[eps1, eps2]: eps1 bounds the variance estimate from below (null: the float32 machine epsilon); eps2 the parameter RMS of the relative step',
    },
    { name: 'd', type: 'number', default: 1, minimum: 1, description: 'clipping threshold: the update is scaled to RMS <= d' },
    { name: 'weight_decay', type: 'number', default: 0, minimum: 0, description: 'decoupled weight decay: theta *= 1 - lr * weight_decay' },
  ],
  slots: [
    // float32 whatever the state_dtype: O(rows + cols) for a matrix (docs/engine.md "compact state").
    { name: 'row_var', nonNegative: true, float32: true, init: { fill: 0 }, shape: rowShape },
    { name: 'col_var', nonNegative: true, float32: true, init: { fill: 0 }, shape: colShape },
    { name: 'variance', nonNegative: true, float32: true, init: { fill: 0 }, shape: (s) => (s.length < 2 ? s : null) },
  ],
  update(g, theta, state, h, t) {
    const lrNow = num(h, 'lr');
    const [e1, eps2] = nullablePair(h, 'eps');
    const eps1 = e1 ?? FLOAT32_EPS;
    const w = Math.pow(t, num(h, 'beta2_decay'));
    const next: Record<string, tf.Tensor> = {};
    let v: tf.Tensor;
    const g2 = tf.square(g);
    if (g.shape.length >= 2) {
      const rowVar = lerp(tf.reshape(state.row_var, rowShape(g.shape)!), tf.mean(g2, -1, true), w);
      const colVar = lerp(tf.reshape(state.col_var, colShape(g.shape)!), tf.mean(g2, -2, true), w);
      v = tf.div(tf.mul(rowVar, colVar), tf.maximum(tf.mean(rowVar, -2, true), eps1));
      next.row_var = rowVar;
      next.col_var = colVar;
    } else {
      v = lerp(tf.reshape(state.variance, g.shape), g2, w);
      next.variance = v;
    }
    const u = tf.div(g, tf.sqrt(tf.maximum(v, eps1 * eps1)));
    const clip = tf.maximum(tf.div(rms(u), num(h, 'd')), 1);
    const paramScale = tf.maximum(rms(theta), eps2);
    const rho = Math.min(lrNow, 1 / Math.sqrt(t));
    return {
      d: tf.mul(u, tf.div(paramScale, clip)),
      scale: lrNow > 0 ? rho / lrNow : 0,
      decay: 1 - lrNow * num(h, 'weight_decay'),
      state: next,
    };
  },
};
