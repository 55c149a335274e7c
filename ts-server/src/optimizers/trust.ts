// The per-tensor trust ratio of LAMB and LARS (optax's scale_by_trust_ratio):
//   ratio = trust_coefficient ||theta|| / (||u|| + eps),  1 when either norm is 0
// as a one-element tensor (no host sync).
import * as tf from '@tensorflow/tfjs-core';

export function trustRatio(theta: tf.Tensor, u: tf.Tensor, coefficient: number, eps: number): tf.Tensor {
  const pn = tf.norm(theta);
  const un = tf.norm(u);
  const ratio = tf.div(tf.mul(pn, coefficient), tf.add(un, eps));
  return tf.where(tf.logicalOr(tf.equal(pn, 0), tf.equal(un, 0)), tf.onesLike(ratio), ratio);
}
