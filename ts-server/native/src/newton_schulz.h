// Muon's orthogonalisation (optimizers/muon-inl.h), target-independent host
// code: the Newton-Schulz iteration of torch.optim.Muon by matrix products
// through OpenBLAS (Debian's pthread build, held at one thread of its own).
// Every product is cut into fixed blocks of output rows that the engine's
// pool runs, so the threads are the engine's and the bits are the same on
// any thread count (docs/engine.md, "Matrix products").
#pragma once

#include <cstddef>

namespace mur {

struct NewtonSchulzParams {
  float a, b, c;  // ns_coefficients
  double eps;     // the Frobenius norm is clamped below at eps
  int steps;      // ns_steps
};

/**
 * out = NS(u) for a rows x cols row-major matrix, as torch's
 * _zeropower_via_newtonschulz computes it (in float32 where torch uses
 * bfloat16): a tall matrix (rows > cols) is transposed first and back at the
 * end; X = u / max(||u||_F, eps); then `steps` times
 *   A = X X^T;  B = b A + c A A;  X = a X + B X.
 * `parallel` lets the pool run the blocks on its threads.
 */
void NewtonSchulz(const float* u, size_t rows, size_t cols, const NewtonSchulzParams& p, float* out, bool parallel);

}  // namespace mur
