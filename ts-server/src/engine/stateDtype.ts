// How a session stores its optimizer's per-element state (OptimizerSpec
// state_dtype): "float32" (the default) or "bfloat16" (the high half of each
// float32: half the bytes, computed in float32). The native engine stores
// bfloat16 as bfloat16 and rounds each store stochastically in its kernels
// (native/src/bf16-inl.h defines the rounding); the tfjs engines accept it and
// keep float32. One-element slots (ASGD's eta and mu, NAdam's mu_product,
// Madam's bound) are float32 whatever the dtype. Host code that narrows
// without a rounding stream (a checkpoint imported into a bfloat16 session,
// a slot's first fill) rounds to nearest even, here.

export const STATE_DTYPES = ['float32', 'bfloat16'] as const;
export type StateDtype = (typeof STATE_DTYPES)[number];

/** A session's state format: its dtype and the seed of bfloat16's stochastic rounding. */
export interface StateFormat {
  dtype: StateDtype;
  seed: number;
}

export const FLOAT32_STATE: StateFormat = { dtype: 'float32', seed: 0 };

/** Bytes of one element of a full-size slot stored as `dtype`. */
export function elementBytes(dtype: StateDtype): number {
  return dtype === 'bfloat16' ? 2 : 4;
}

/** float32 values narrowed to bfloat16 bits, rounded to nearest even (NaN stays NaN). */
export function narrowBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000)
      dst[i] = (b >>> 16) | 0x40; // NaN: keep it quiet and NaN
    else dst[i] = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return dst;
}

/** bfloat16 bits widened to float32 (exact). */
export function widenBf16(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}
