// Bytes on the wire <-> Float32Array, little-endian, row-major.
// float32: aligned buffers are viewed, not copied; a misaligned one is copied
// once. bfloat16 (gradients only): widened to float32, exactly (a bfloat16 is
// the upper 16 bits of a float32).
import { DType } from '../../generated/mur/v1/optimizer';
import { InvalidArgument } from '../errors';

export const SUPPORTED_DTYPES = [DType.DTYPE_FLOAT32, DType.DTYPE_BFLOAT16];
/** What a tensor may be sent as where only float32 is kept (parameters, state). */
export const VALUE_DTYPES = [DType.DTYPE_FLOAT32];
/** Gradients may also travel as bfloat16, halving the bytes on the wire. */
export const GRADIENT_DTYPES = [DType.DTYPE_FLOAT32, DType.DTYPE_BFLOAT16];

export function checkDtype(dtype: DType, what: string, allowed: DType[] = VALUE_DTYPES): void {
  if (!allowed.includes(dtype)) {
    const name = DType[dtype] ?? `dtype ${dtype}`;
    throw new InvalidArgument(`${what}: dtype ${name} is not supported here (${allowed.map((d) => DType[d]).join(' or ')})`);
  }
}

/** A Float32Array of the values in `bytes` (float32: a view when 4-byte aligned). */
export function bytesToF32(bytes: Uint8Array, what: string, dtype: DType = DType.DTYPE_FLOAT32): Float32Array {
  if (dtype === DType.DTYPE_BFLOAT16) return bf16ToF32(bytes, what);
  if (bytes.byteLength % 4 !== 0) {
    throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of float32 values`);
  }
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Float32Array(bytes.slice().buffer);
}

function bf16ToF32(bytes: Uint8Array, what: string): Float32Array {
  if (bytes.byteLength % 2 !== 0) {
    throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of bfloat16 values`);
  }
  const n = bytes.byteLength / 2;
  const src = bytes.byteOffset % 2 === 0 ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint16Array(bytes.slice().buffer);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = src[i] << 16;
  return new Float32Array(out.buffer);
}

/** The bytes of a Float32Array, as a Buffer sharing its memory. */
export function f32ToBytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
