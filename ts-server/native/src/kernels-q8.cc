// The fused kernels for q8 state (state_dtype "q8", q8map.h): the same
// sources as kernels.cc (fused-inl.h) with S = Q8, so every task runs the
// float32 kernel block by block on dequantised slots and quantises them
// back (optimizers/common-inl.h: Q8Blocks). A translation unit of its own:
// the build compiles it beside kernels.cc and kernels-bf16.cc.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels-q8.cc"
#include <string>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

// After foreach_target.h, which includes this file again once per target.
#include "fused-inl.h"
#include "kernel.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

std::string RunStepQ8Impl(int opt, int rule, const Job* jobs, size_t n) { return RunStepT<Q8>(opt, rule, jobs, n); }

void Q8CodesImpl(const float* x, size_t n, bool is_unsigned, uint8_t* codes) {
  Q8CodesOf(x, n, Q8MapOf(is_unsigned), codes);
}

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mur {
HWY_EXPORT(RunStepQ8Impl);
HWY_EXPORT(Q8CodesImpl);
std::string RunStepQ8(int opt, int rule, const Job* jobs, size_t njobs) {
  return HWY_DYNAMIC_DISPATCH(RunStepQ8Impl)(opt, rule, jobs, njobs);
}
void Q8Codes(const float* x, size_t n, bool is_unsigned, uint8_t* codes) {
  HWY_DYNAMIC_DISPATCH(Q8CodesImpl)(x, n, is_unsigned, codes);
}
}  // namespace mur
#endif
