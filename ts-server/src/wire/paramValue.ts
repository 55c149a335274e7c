// A step's new values as ParamValues: a parameter whole, or (stepped with a
// row-sparse gradient) its touched rows at the gradient's indices. Tensor
// bytes are the session's or a copy (session.ts: StepResult); `withData`
// false leaves them out (the tcp data port sends them after the header).
import { DType, type ParamValue } from '../../generated/mur/v1/optimizer';
import type { StepResult } from '../session/session';
import { f32ToBytes } from './tensors';

export function paramValue(v: StepResult['values'][number], shape: number[], withData = true): ParamValue {
  const data = withData ? f32ToBytes(v.data) : Buffer.alloc(0);
  if (!v.rows) return { paramId: v.id, value: { shape, dtype: DType.DTYPE_FLOAT32, data } };
  return {
    paramId: v.id,
    rows: { indices: Array.from(v.rows), values: { shape: [v.rows.length, ...shape.slice(1)], dtype: DType.DTYPE_FLOAT32, data } },
  };
}
