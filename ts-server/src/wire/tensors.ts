// Bytes on the wire <-> Float32Array, little-endian float32, row-major.
// Aligned buffers are viewed, not copied; only a misaligned one is copied once.
import { DType } from '../../generated/mur/v1/optimizer';
import { InvalidArgument } from '../errors';

export const SUPPORTED_DTYPES = [DType.DTYPE_FLOAT32];

export function checkDtype(dtype: DType, what: string): void {
  if (dtype !== DType.DTYPE_FLOAT32) {
    const name = DType[dtype] ?? `dtype ${dtype}`;
    throw new InvalidArgument(`${what}: dtype ${name} is not supported (only DTYPE_FLOAT32)`);
  }
}

/** A Float32Array over `bytes` (a view when 4-byte aligned). */
export function bytesToF32(bytes: Uint8Array, what: string): Float32Array {
  if (bytes.byteLength % 4 !== 0) {
    throw new InvalidArgument(`${what}: ${bytes.byteLength} bytes is not a whole number of float32 values`);
  }
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Float32Array(bytes.slice().buffer);
}

/** The bytes of a Float32Array, as a Buffer sharing its memory. */
export function f32ToBytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
