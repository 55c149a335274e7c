// The shape of a declared slot for one parameter (engine/types.ts, SlotDecl):
// the parameter's own, one element for a scalar slot, or the slot's shape
// function (Adafactor's row and column statistics); null where the slot does
// not exist for a parameter of that shape.
import type { SlotDecl } from './types';

export function slotShape(decl: SlotDecl, param: number[]): number[] | null {
  if (decl.shape) return decl.shape(param);
  return decl.scalar ? [1] : param;
}

/** Elements of slotShape (0 where the slot does not exist). */
export function slotSize(decl: SlotDecl, param: number[]): number {
  const s = slotShape(decl, param);
  return s === null ? 0 : s.reduce((a, b) => a * b, 1);
}
