// One Newton-Schulz iteration of Muon (X' = a X + (b A + c A A) X, A = X X^T)
// on 1024x1024 and 1024x4096 (a 4096x1024 parameter, transposed), through
// OpenBLAS (its own threads: 1, 2) or Eigen (OpenMP threads: 1, 2), to choose
// the native engine's BLAS (docs/engine.md). Prints ms per iteration and
// whether the 2-thread result has the same bits as the 1-thread one.
// Built and run by scripts/bench-blas.sh.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#ifdef USE_EIGEN
#include <Eigen/Dense>
#ifdef _OPENMP
#include <omp.h>
#endif
#else
#include <cblas.h>
#endif

static const float kA = 3.4445f, kB = -4.7750f, kC = 2.0315f;

static void Iteration(int m, int n, const float* x, float* a, float* b, float* out) {
#ifdef USE_EIGEN
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const M> X(x, m, n);
  Eigen::Map<M> A(a, m, m), B(b, m, m), O(out, m, n);
  A.noalias() = X * X.transpose();
  B = kB * A;
  B.noalias() += kC * (A * A);
  O = kA * X;
  O.noalias() += B * X;
#else
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, n, 1.0f, x, n, x, n, 0.0f, a, m);
  std::memcpy(b, a, sizeof(float) * m * m);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, m, m, kC, a, m, a, m, kB, b, m);
  std::memcpy(out, x, sizeof(float) * m * n);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, m, 1.0f, b, m, x, n, kA, out, n);
#endif
}

static void SetThreads(int t) {
#ifdef USE_EIGEN
#ifdef _OPENMP
  omp_set_num_threads(t);
#endif
  Eigen::setNbThreads(t);
#else
  openblas_set_num_threads(t);
#endif
}

int main() {
  const char* lib =
#ifdef USE_EIGEN
      "eigen"
#else
      "openblas"
#endif
      ;
  for (int n : {1024, 4096}) {
    const int m = 1024;
    std::vector<float> x(size_t(m) * n), a(size_t(m) * m), b(size_t(m) * m), o1(size_t(m) * n), o2(size_t(m) * n);
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0, 1.0f / 1024);
    for (auto& v : x) v = dist(rng);
    for (int t : {1, 2}) {
      SetThreads(t);
      std::vector<float>& o = t == 1 ? o1 : o2;
      Iteration(m, n, x.data(), a.data(), b.data(), o.data());  // warm-up
      double best = 1e30;
      for (int r = 0; r < 3; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        Iteration(m, n, x.data(), a.data(), b.data(), o.data());
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("%-8s %dx%d (param %dx%d) threads=%d: %8.1f ms/iteration", lib, m, n, n, m, t, best);
      if (t == 2)
        std::printf("  same bits as 1 thread: %s", std::memcmp(o1.data(), o2.data(), 4 * o1.size()) ? "no" : "yes");
      std::printf("\n");
    }
  }
}
