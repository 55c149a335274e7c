// Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"; torch.optim
// has none: optax.contrib.schedule_free_adamw is the reference). Three
// sequences: y (theta, where the gradient is taken), z (the base iterate:
// the rule acts on it) and x (the average, the point to evaluate), with
// x = (y - (1-b1) z) / b1 derived, not stored (as optax derives it: the same
// float32 operations keep optax's bits, and a slot fewer).
//   v = ema(v, g^2, b2);  d = g / (sqrt(v / bc2) + eps) + weight_decay y
//   z' = z - xi(z, d)                     scale = warmup(t - 1)
//   max_lr = max(max_lr, lr warmup(t));   w = max_lr^weight_lr_power
//   c = w / (weight_sum + w) (0 at 0/0);  weight_sum += w
//   x' = (1 - c) x + c z';                y' = b1 x' + (1 - b1) z'
// warmup(k) = min(k, warmup_steps) / warmup_steps (1 at warmup_steps 0): optax
// evaluates its warmup schedule at count t-1 for the base step and at t for
// the averaging weight. The additive rule gives optax's trajectory.
// weight_sum and max_lr are read on the host (one sync per parameter and
// step, as ASGD's eta and mu); the rule acts on z through `ruleOn` (engine/step.ts).
import * as tf from '@tensorflow/tfjs-core';
import type { Hypers, OptimizerDef } from '../engine/types';
import { num, pair } from '../engine/hypers';
import { ema, eps } from './common';

const scalarOf = (t: tf.Tensor) => (t.dataSync() as Float32Array)[0];

/** optax's warmup_constant_schedule(0, lr, W) over lr at count k: min(k, W) / W, 1 without warmup. */
export const warmupFactor = (k: number, warmup: number) => (warmup > 0 ? Math.min(k, warmup) / warmup : 1);

export const scheduleFreeAdamw: OptimizerDef = {
  name: 'schedule_free_adamw',
  description: 'Schedule-Free AdamW (optax.contrib.schedule_free_adamw): no lr decay; evaluate at x (eval()).',
  hypers: [
    { name: 'lr', type: 'number', default: 0.0025, minimum: 0, description: 'learning rate (optax: learning_rate)' },
    {
      name: 'betas',
      type: 'pair',
      default: [0.9, 0.999],
      items: [
        { exclusiveMinimum: 0, exclusiveMaximum: 1 },
        { minimum: 0, exclusiveMaximum: 1 },
      ],
      description: 'b1: the interpolation y = b1 x + (1 - b1) z (> 0: x = (y - (1-b1) z) / b1); b2: the average of g^2',
    },
    eps(1e-8),
    {
      name: 'weight_decay',
      type: 'number',
      default: 0,
      minimum: 0,
      description: 'added to the direction at y: d += weight_decay * y (optax: add_decayed_weights)',
    },
    {
      name: 'warmup_steps',
      type: 'number',
      default: 0,
      minimum: 0,
      integer: true,
      fixed: true,
      description: "linear warmup of lr from 0 over this many steps (optax's warmup_constant_schedule); 0: none",
    },
    {
      name: 'weight_lr_power',
      type: 'number',
      default: 2,
      minimum: 0,
      description: 'the averaging weight of a step is max_lr^weight_lr_power',
    },
  ],
  slots: [
    { name: 'z', float32: true, init: { copyOfTheta: true } }, // the iterate, not a moment: float32 whatever the state_dtype
    { name: 'exp_avg_sq', nonNegative: true, init: { fill: 0 } },
    { name: 'weight_sum', init: { fill: 0 }, scalar: true },
    { name: 'max_lr', init: { fill: 0 }, scalar: true },
  ],
  update(g, y, state, h, t) {
    const b2 = pair(h, 'betas')[1];
    const v = ema(state.exp_avg_sq, tf.square(g), b2);
    const d = tf.add(tf.div(g, tf.add(tf.sqrt(tf.div(v, 1 - Math.pow(b2, t))), num(h, 'eps'))), tf.mul(y, num(h, 'weight_decay')));
    const a = averaging(state, h, t);
    return {
      d,
      scale: warmupFactor(t - 1, num(h, 'warmup_steps')),
      state: { exp_avg_sq: v, weight_sum: tf.fill([1], a.total), max_lr: tf.fill([1], a.maxLr) },
    };
  },
  ruleOn: {
    slot: 'z',
    combine(y, z, zNew, before, h, t) {
      const b1 = pair(h, 'betas')[0];
      const { ck } = averaging(before, h, t);
      const x = tf.div(tf.sub(y, tf.mul(z, 1 - b1)), b1);
      const xNew = tf.add(tf.mul(x, 1 - ck), tf.mul(zNew, ck));
      return tf.add(tf.mul(xNew, b1), tf.mul(zNew, 1 - b1));
    },
  },
};

/** This step's max_lr, weight_sum and averaging weight c from the stored scalars (host maths in double). */
function averaging(before: Record<string, tf.Tensor>, h: Hypers, t: number): { maxLr: number; total: number; ck: number } {
  const maxLr = Math.max(scalarOf(before.max_lr), num(h, 'lr') * warmupFactor(t, num(h, 'warmup_steps')));
  const weight = Math.pow(maxLr, num(h, 'weight_lr_power'));
  const total = scalarOf(before.weight_sum) + weight;
  return { maxLr, total, ck: total > 0 ? weight / total : 0 }; // optax: nan_to_num(0 / 0) = 0
}
