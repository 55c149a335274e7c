// The vector pieces of L-BFGS on flat float32 vectors (all parameters of the
// session, in declaration order, as torch's _gather_flat_grad lays them).
// Vectors stay float32, as torch keeps them: every elementwise result is
// rounded to float32 by the Float32Array it is stored in. Reductions (dot
// products, sums) accumulate in float64 and are rounded to float32 once,
// where torch's float32 0-d tensors hold them: a float64 sum of float32
// products has error about n * 2^-53 relative, below the float32 rounding of
// the result for any n < 2^29, so the result is the correctly rounded float32
// value or one ulp from it, where torch's own float32 BLAS summation (whose
// order depends on the SIMD width) carries up to about log2(n) ulps.

/** x . y, accumulated in float64 (four running sums, for speed), rounded to float32. */
export function dot(x: Float32Array, y: Float32Array): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n = x.length;
  const m = n - (n % 4);
  for (let i = 0; i < m; i += 4) {
    s0 += x[i] * y[i];
    s1 += x[i + 1] * y[i + 1];
    s2 += x[i + 2] * y[i + 2];
    s3 += x[i + 3] * y[i + 3];
  }
  for (let i = m; i < n; i++) s0 += x[i] * y[i];
  return Math.fround(s0 + s1 + (s2 + s3));
}

/** max |x_i| (0 for an empty vector). */
export function maxAbs(x: Float32Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

/** sum |x_i|, accumulated in float64, rounded to float32. */
export function sumAbs(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.abs(x[i]);
  return Math.fround(s);
}

/** A new vector a * x (a rounded to float32 first, as torch casts a scalar to the tensor's dtype). */
export function scaled(x: Float32Array, a: number): Float32Array {
  const a32 = Math.fround(a);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * a32;
  return out;
}

/**
 * x += a * y in place (torch's x.add_(y, alpha=a), a fused multiply-add on
 * its vectorised CPU path): the product of two float32 values is exact in
 * float64, so x + a y is rounded once, to float32, by the store.
 */
export function axpy(x: Float32Array, a: number, y: Float32Array): void {
  const a32 = Math.fround(a);
  for (let i = 0; i < x.length; i++) x[i] = x[i] + a32 * y[i];
}

/** A new vector x - y. */
export function minus(x: Float32Array, y: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] - y[i];
  return out;
}
