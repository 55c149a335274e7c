// Muon (torch.optim.Muon, torch >= 2.9; Jordan et al. 2024) for 2-D
// parameters: momentum as torch's lerps, then the Newton-Schulz
// orthogonalisation of that momentum (newtonSchulz below), times torch's lr
// adjustment for an A x B matrix, with decoupled weight decay:
//   buf = lerp(buf, g, 1 - mu);  u = nesterov ? lerp(g, buf, mu) : buf
//   d = NS(u),  scale = adjust(A, B),  decay = 1 - lr weight_decay
//   adjust: original sqrt(max(1, A/B)), match_rms_adamw 0.2 sqrt(max(A, B)),
//           spectral_unclamped sqrt(A/B)
// The additive rule is torch's step, theta (1 - lr wd) - lr adjust NS(u).
// torch runs NS in bfloat16; mur runs it in float32 (docs/update-rules.md).
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerDef } from '../engine/types';
import { choice, flag, num, triple } from '../engine/hypers';

export const ADJUST_LR_FNS = ['original', 'match_rms_adamw', 'spectral_unclamped'] as const;

/** torch's lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w). */
function lerp(a: tf.Tensor, b: tf.Tensor, w: number): tf.Tensor {
  return w < 0.5 ? tf.add(a, tf.mul(tf.sub(b, a), w)) : tf.sub(b, tf.mul(tf.sub(b, a), 1 - w));
}

/**
 * torch's _zeropower_via_newtonschulz: a tall matrix is transposed (and back),
 * X = u / max(||u||_F, eps), then `steps` times A = X X^T, B = b A + c A A, X = a X + B X.
 */
export function newtonSchulz(u: tf.Tensor, [a, b, c]: [number, number, number], steps: number, eps: number): tf.Tensor {
  const [rows, cols] = u.shape;
  const tall = rows > cols;
  let x = tall ? tf.transpose(u) : u;
  x = tf.div(x, tf.maximum(tf.norm(x), eps));
  for (let s = 0; s < steps; s++) {
    const gram = tf.matMul(x, x, false, true);
    const poly = tf.add(tf.mul(gram, b), tf.mul(tf.matMul(gram, gram), c));
    x = tf.add(tf.mul(x, a), tf.matMul(poly, x));
  }
  return tall ? tf.transpose(x) : x;
}

/** torch's _adjust_lr ratio for an A x B parameter. */
export function adjustRatio(fn: string, [A, B]: readonly number[]): number {
  if (fn === 'match_rms_adamw') return 0.2 * Math.sqrt(Math.max(A, B));
  if (fn === 'spectral_unclamped') return Math.sqrt(A / B);
  return Math.sqrt(Math.max(1, A / B));
}

export const muon: OptimizerDef = {
  name: 'muon',
  description: 'Muon (torch.optim.Muon): momentum orthogonalised by Newton-Schulz, for 2-D parameters.',
  hypers: [
    { name: 'lr', type: 'number', default: 1e-3, minimum: 0, description: 'learning rate eta (before the shape adjustment)' },
    {
      name: 'weight_decay',
      type: 'number',
      default: 0.1,
      minimum: 0,
      description: 'decoupled weight decay: theta *= 1 - lr * weight_decay',
    },
    { name: 'momentum', type: 'number', default: 0.95, minimum: 0, description: 'momentum mu: buf = lerp(buf, g, 1 - mu)' },
    { name: 'nesterov', type: 'boolean', default: true, description: 'Nesterov momentum: orthogonalise lerp(g, buf, mu) instead of buf' },
    {
      name: 'ns_coefficients',
      type: 'triple',
      default: [3.4445, -4.775, 2.0315],
      description: '(a, b, c) of the Newton-Schulz step X = a X + (b A + c A^2) X, A = X X^T',
    },
    {
      name: 'eps',
      type: 'number',
      default: 1e-7,
      minimum: 0,
      description: 'lower bound of the Frobenius norm that normalises the momentum',
    },
    {
      name: 'ns_steps',
      type: 'number',
      integer: true,
      default: 5,
      minimum: 0,
      maximum: 99,
      description: 'Newton-Schulz iterations (torch refuses 100 or more)',
    },
    {
      name: 'adjust_lr_fn',
      type: 'choice',
      choices: ADJUST_LR_FNS,
      default: 'original',
      description:
        'lr adjustment by shape A x B: original sqrt(max(1, A/B)), match_rms_adamw 0.2 sqrt(max(A, B)), spectral_unclamped sqrt(A/B)',
    },
  ],
  slots: [{ name: 'momentum_buffer', init: { fill: 0 } }],
  refuseShape(shape) {
    if (shape.length !== 2) return `muon takes 2-D parameters only (torch.optim.Muon); this one has ${shape.length} dimensions`;
    if (shape[0] === 0 || shape[1] === 0) return 'muon needs both dimensions non-zero (its lr adjustment divides by them)';
    return undefined;
  },
  update(g, theta, state, h) {
    const mu = num(h, 'momentum');
    const buf = lerp(state.momentum_buffer, g, 1 - mu);
    const u = flag(h, 'nesterov') ? lerp(g, buf, mu) : buf;
    return {
      d: newtonSchulz(u, triple(h, 'ns_coefficients'), num(h, 'ns_steps'), num(h, 'eps')),
      scale: adjustRatio(choice(h, 'adjust_lr_fn'), theta.shape),
      decay: 1 - num(h, 'lr') * num(h, 'weight_decay'),
      state: { momentum_buffer: buf },
    };
  },
};
