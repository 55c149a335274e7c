// Tensors larger than one message travel as ordered TensorChunk messages.
// The assembler reassembles them, refusing anything out of order or
// inconsistent; `split` cuts a tensor into chunks for a reply.
import type { TensorChunk } from '../../generated/mur/v1/optimizer';
import { DType } from '../../generated/mur/v1/optimizer';
import { Aborted, InvalidArgument, OutOfRange, ResourceExhausted } from '../errors';
import { bytesToF32, checkDtype, f32ToBytes, VALUE_DTYPES } from './tensors';

interface Partial {
  paramId: string;
  slot: string;
  data: Float32Array;
  filled: number;
}

export class ChunkAssembler {
  private readonly open = new Map<string, Partial>();
  private readonly done: Partial[] = [];
  private elements = 0;

  /**
   * @param maxElements the most values all tensors together may hold
   * @param dtypes what the chunks may carry (gradients: float32, bfloat16 or float16)
   */
  constructor(
    private readonly maxElements: number,
    private readonly dtypes: DType[] = VALUE_DTYPES,
  ) {}

  add(c: TensorChunk): void {
    const key = `${c.paramId}\0${c.slot}`;
    const where = `chunk of '${c.paramId}'${c.slot ? ` slot '${c.slot}'` : ''} at offset ${c.offset}`;
    checkDtype(c.dtype, where, this.dtypes);
    const values = bytesToF32(c.data, where, c.dtype);
    let t = this.open.get(key);
    if (!t) {
      if (this.done.some((d) => d.paramId === c.paramId && d.slot === c.slot)) {
        throw new OutOfRange(`${where}: the tensor was already complete`);
      }
      if (c.offset !== 0) throw new OutOfRange(`${where}: the first chunk of a tensor must start at offset 0`);
      if (!Number.isSafeInteger(c.totalElements) || c.totalElements < 0) {
        throw new InvalidArgument(`${where}: total_elements ${c.totalElements} is not a size`);
      }
      if (this.elements + c.totalElements > this.maxElements) {
        throw new ResourceExhausted(`${where}: ${c.totalElements} elements exceed the limit of ${this.maxElements} per request`);
      }
      this.elements += c.totalElements;
      t = { paramId: c.paramId, slot: c.slot, data: new Float32Array(c.totalElements), filled: 0 };
      this.open.set(key, t);
    } else {
      if (c.totalElements !== t.data.length) {
        throw new InvalidArgument(`${where}: total_elements ${c.totalElements} differs from ${t.data.length} in an earlier chunk`);
      }
      if (c.offset !== t.filled) throw new OutOfRange(`${where}: expected offset ${t.filled} (chunks must arrive in order)`);
    }
    if (t.filled + values.length > t.data.length) {
      throw new OutOfRange(`${where}: ${values.length} values run past total_elements ${t.data.length}`);
    }
    t.data.set(values, t.filled);
    t.filled += values.length;
    if (t.filled === t.data.length) {
      this.open.delete(key);
      this.done.push(t);
    }
  }

  /** Every tensor, in the order they completed; throws if one is unfinished. */
  finish(): Array<{ paramId: string; slot: string; data: Float32Array }> {
    for (const t of this.open.values()) {
      throw new Aborted(`'${t.paramId}'${t.slot ? ` slot '${t.slot}'` : ''}: truncated, ${t.filled} of ${t.data.length} elements arrived`);
    }
    // A zero-element tensor completes on its first (empty) chunk.
    return this.done.map(({ paramId, slot, data }) => ({ paramId, slot, data }));
  }
}

/** Cuts one tensor into chunks of at most `chunkBytes` (at least one chunk). */
export function* split(paramId: string, slot: string, data: Float32Array, chunkBytes: number): Generator<TensorChunk> {
  const per = Math.max(1, Math.floor(chunkBytes / 4));
  let offset = 0;
  do {
    const part = data.subarray(offset, offset + per);
    yield { paramId, slot, offset, totalElements: data.length, dtype: DType.DTYPE_FLOAT32, data: f32ToBytes(part) };
    offset += part.length;
  } while (offset < data.length);
}
