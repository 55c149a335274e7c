// See newton_schulz.h. Each matrix product C = alpha op(A) B + beta C is cut
// into blocks of kRowBlock output rows, whatever the thread count; one block
// is one single-threaded sgemm call, so a block's bits do not depend on which
// thread runs it or on how many there are.
#include "newton_schulz.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "pool.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace mur {
namespace {

constexpr size_t kRowBlock = 256;

struct Gemm {
  bool trans_b;  // B is used transposed (A = X X^T)
  size_t m, n, k;
  float alpha, beta;
  const float* a;  // m x k, row-major
  const float* b;  // k x n (or n x k when trans_b), row-major
  float* c;        // m x n, row-major
};

void GemmBlock(void* ctx, size_t block) {
  const Gemm& g = *static_cast<const Gemm*>(ctx);
  const size_t r0 = block * kRowBlock, rows = std::min(kRowBlock, g.m - r0);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(rows),
              static_cast<int>(g.n), static_cast<int>(g.k), g.alpha, g.a + r0 * g.k, static_cast<int>(g.k), g.b,
              static_cast<int>(g.trans_b ? g.k : g.n), g.beta, g.c + r0 * g.n, static_cast<int>(g.n));
}

void Run(const Gemm& g, bool parallel) {
  const size_t blocks = (g.m + kRowBlock - 1) / kRowBlock;
  if (parallel && blocks > 1) {
    Pool::Get().Run(blocks, &GemmBlock, const_cast<Gemm*>(&g));
  } else {
    for (size_t b = 0; b < blocks; ++b) GemmBlock(const_cast<Gemm*>(&g), b);
  }
}

void Transpose(const float* src, size_t rows, size_t cols, float* dst) {
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

}  // namespace

void NewtonSchulz(const float* u, size_t rows, size_t cols, const NewtonSchulzParams& p, float* out, bool parallel) {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });  // the pool is the only source of threads
  const bool tall = rows > cols;
  const size_t m = tall ? cols : rows, n = tall ? rows : cols;
  std::vector<float> x(m * n), y(m * n), a(m * m), b(m * m);
  if (tall) {
    Transpose(u, rows, cols, x.data());
  } else {
    std::memcpy(x.data(), u, sizeof(float) * m * n);
  }
  double sq = 0;  // one thread, in index order: the same bits every time
  for (float v : x) sq += static_cast<double>(v) * v;
  const float norm = static_cast<float>(std::max(std::sqrt(sq), p.eps));
  for (float& v : x) v /= norm;
  for (int s = 0; s < p.steps; ++s) {
    Run({true, m, m, n, 1.0f, 0.0f, x.data(), x.data(), a.data()}, parallel);  // A = X X^T
    b = a;
    Run({false, m, m, m, p.c, p.b, a.data(), a.data(), b.data()}, parallel);  // B = b A + c A A
    y = x;
    Run({false, m, n, m, 1.0f, p.a, b.data(), x.data(), y.data()}, parallel);  // Y = a X + B X
    x.swap(y);
  }
  if (tall) {
    Transpose(x.data(), m, n, out);
  } else {
    std::memcpy(out, x.data(), sizeof(float) * m * n);
  }
}

}  // namespace mur
