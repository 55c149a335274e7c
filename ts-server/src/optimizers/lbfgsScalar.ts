// Scalars as torch.optim.LBFGS holds them: a Python float (double) or a
// 0-d float32 tensor (a dot product, a max, and whatever arithmetic touches
// one). torch's rules, which these follow: an operation with a tensor
// operand is computed in float32 (a Python number beside it is cast to
// float32 first) and gives a tensor; a comparison with a tensor operand
// compares in float32; Python's min and max return one of their operands
// unchanged (the first when they tie). The line search compares losses that
// differ in the last float32 bits near convergence, so these types decide
// its path (and the number of closure evaluations) there.
export interface Scalar {
  readonly v: number;
  /** A float32 tensor (else a Python float). */
  readonly f32: boolean;
}

export const py = (v: number): Scalar => ({ v, f32: false });
export const f32 = (v: number): Scalar => ({ v: Math.fround(v), f32: true });

function op(a: Scalar, b: Scalar, fn: (x: number, y: number) => number): Scalar {
  if (!a.f32 && !b.f32) return py(fn(a.v, b.v));
  return f32(fn(Math.fround(a.v), Math.fround(b.v)));
}

export const add = (a: Scalar, b: Scalar) => op(a, b, (x, y) => x + y);
export const sub = (a: Scalar, b: Scalar) => op(a, b, (x, y) => x - y);
export const mul = (a: Scalar, b: Scalar) => op(a, b, (x, y) => x * y);
export const div = (a: Scalar, b: Scalar) => op(a, b, (x, y) => x / y);
export const abs = (a: Scalar): Scalar => ({ v: Math.abs(a.v), f32: a.f32 });
/** tensor.sqrt() (torch's line search takes it of a tensor only). */
export const sqrt = (a: Scalar) => f32(Math.sqrt(a.v));

function cmp(a: Scalar, b: Scalar): [number, number] {
  return a.f32 || b.f32 ? [Math.fround(a.v), Math.fround(b.v)] : [a.v, b.v];
}
export const lt = (a: Scalar, b: Scalar) => {
  const [x, y] = cmp(a, b);
  return x < y;
};
export const le = (a: Scalar, b: Scalar) => {
  const [x, y] = cmp(a, b);
  return x <= y;
};
export const gt = (a: Scalar, b: Scalar) => lt(b, a);
export const ge = (a: Scalar, b: Scalar) => le(b, a);
/** Python's max(a, b): b only when b > a. */
export const max = (a: Scalar, b: Scalar) => (gt(b, a) ? b : a);
/** Python's min(a, b): b only when b < a. */
export const min = (a: Scalar, b: Scalar) => (lt(b, a) ? b : a);
