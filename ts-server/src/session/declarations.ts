// What a client declares about its parameters at CreateSession, checked
// whole before a session exists. The caller's objects are never modified.
import { InvalidArgument, ResourceExhausted } from '../errors';

export interface ParamDeclaration {
  id: string;
  name: string;
  shape: number[];
  group: string;
  /** Initial values, or null when they come later through importState. */
  values: Float32Array | null;
}

export const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** The most elements one tensor may hold (what one Float32Array can address, with room). */
export const MAX_ELEMENTS = 2 ** 31 - 1;

/** Throws InvalidArgument naming the first NaN or infinity (found by `firstNonFinite`). */
export function checkFinite(a: Float32Array, what: string, firstNonFinite: (a: Float32Array) => number): void {
  const i = firstNonFinite(a);
  if (i >= 0) throw new InvalidArgument(`${what}: element ${i} is ${a[i]} (must be finite)`);
}

/** Checks ids, shapes, value counts and finiteness of every declaration. */
export function checkDeclarations(decls: ParamDeclaration[], firstNonFinite: (a: Float32Array) => number): void {
  const seen = new Set<string>();
  decls.forEach((d, i) => {
    if (!d.id) throw new InvalidArgument(`params[${i}].id: must not be empty`);
    if (seen.has(d.id)) throw new InvalidArgument(`params[${i}].id: duplicate id '${d.id}'`);
    seen.add(d.id);
    if (d.shape.some((n) => !Number.isSafeInteger(n) || n < 0)) {
      throw new InvalidArgument(`params[${i}].shape: ${JSON.stringify(d.shape)} is not a shape`);
    }
    if (sizeOf(d.shape) > MAX_ELEMENTS) {
      throw new ResourceExhausted(
        `params[${i}] '${d.id}': shape ${JSON.stringify(d.shape)} has ${sizeOf(d.shape)} elements; a tensor may hold at most ${MAX_ELEMENTS}`,
      );
    }
    if (d.values && d.values.length !== sizeOf(d.shape)) {
      throw new InvalidArgument(
        `params[${i}] '${d.id}': ${d.values.length} values for shape ${JSON.stringify(d.shape)} (${sizeOf(d.shape)} elements)`,
      );
    }
    if (d.values) checkFinite(d.values, `params[${i}] '${d.id}'`, firstNonFinite);
  });
}
