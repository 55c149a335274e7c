// The native engine's contract, independent of any SIMD target.
//
// A step is a list of Jobs, one per parameter tensor. Every job of one call
// uses the same optimizer x rule; each carries its own hyperparameters (its
// group's) and its own step count. A fused kernel makes one pass over a
// job's memory: it reads the gradient, the parameter and the optimizer's
// slots, and writes the new slots and the new parameter in place.
//
// The maths is in docs/update-rules.md; each optimizer and rule is one file
// under optimizers/ and rules/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mur {

constexpr int kMaxOptSlots = 3;   // Adam with AMSGrad, RMSprop centered with momentum, ASGD
constexpr int kMaxRuleSlots = 1;  // exp_sign's bound
// A job's hyperparameter block (doubles): [0] = t (this parameter's step,
// from 1), [1] = lr, [kOptHyper..] the optimizer's table, [kRuleHyper..] the
// rule's table, each in the order its descriptor names.
constexpr int kOptHyper = 2;
constexpr int kRuleHyper = 16;
constexpr int kHyperBlock = 24;

struct Job {
  float* theta;
  const float* grad;
  size_t n;
  float* slot[kMaxOptSlots];        // nullptr where this step does not use it
  float* rule_slot[kMaxRuleSlots];  // ditto
  const double* h;                  // kHyperBlock values
  uint32_t fresh;                   // bit k: optimizer slot k was just created (init "grad")
};

/** Names an engine binding needs to lay out jobs (target-independent). */
struct Descriptor {
  const char* name;
  const char* const* hypers;  // flattened table: "betas.0", "betas.1", booleans as 0/1
  int n_hypers;
  const char* const* slots;  // positional slot names
  int n_slots;
  uint32_t scalar_slots;  // bit k: slot k holds one element, not n
};

enum OptimizerId {
  kSgd,
  kAdam,
  kAdamW,
  kAdagrad,
  kRmsprop,
  kAdamax,
  kNadam,
  kRadam,
  kAdadelta,
  kLion,
  kRprop,
  kAsgd,
  kLamb,
  kLars,
  kNumOptimizers
};
enum RuleId { kAdditive, kMultiplicative, kHybrid, kExpSign, kNumRules };

const Descriptor& OptimizerDescriptor(int id);
const Descriptor& RuleDescriptor(int id);

/** Returns "" on success, else why the step was refused (nothing was written). */
std::string RunStep(int opt, int rule, const Job* jobs, size_t njobs);
/** Index of the first NaN or infinity, or -1. */
int64_t FirstNonFinite(const float* x, size_t n);
/** The same, and a 64-bit digest of the bytes (independent of the thread count). */
int64_t Scan(const float* x, size_t n, uint64_t* digest);
/** Sum of squares in double. */
double SumSquares(const float* x, size_t n);
/** The SIMD target chosen at run time, e.g. "AVX3". */
const char* TargetName();

}  // namespace mur
