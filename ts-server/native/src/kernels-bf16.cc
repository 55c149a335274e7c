// The fused kernels for bfloat16 state (state_dtype "bfloat16"): the same
// sources as kernels.cc (fused-inl.h) with S = Bf16, so every slot load
// widens and every store rounds stochastically (bf16-inl.h). A translation
// unit of its own: the build compiles it beside kernels.cc.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels-bf16.cc"
#include <string>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

// After foreach_target.h, which includes this file again once per target.
#include "fused-inl.h"
#include "kernel.h"

HWY_BEFORE_NAMESPACE();
namespace mur {
namespace HWY_NAMESPACE {

std::string RunStepBf16Impl(int opt, int rule, const Job* jobs, size_t n) { return RunStepT<Bf16>(opt, rule, jobs, n); }

}  // namespace HWY_NAMESPACE
}  // namespace mur
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mur {
HWY_EXPORT(RunStepBf16Impl);
std::string RunStepBfloat16(int opt, int rule, const Job* jobs, size_t njobs) {
  return HWY_DYNAMIC_DISPATCH(RunStepBf16Impl)(opt, rule, jobs, njobs);
}
}  // namespace mur
#endif
