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

constexpr int kMaxOptSlots = 4;   // Schedule-Free (z, exp_avg_sq, weight_sum, max_lr)
constexpr int kMaxRuleSlots = 1;  // exp_sign's bound
// A job's hyperparameter block (doubles): [0] = t (this parameter's step,
// from 1), [1] = lr, [kOptHyper..] the optimizer's table, [kRuleHyper..] the
// rule's table, each in the order its descriptor names; [kRowsHyper] the
// parameter's first dimension (Muon's matrices: n / rows columns).
constexpr int kOptHyper = 2;
constexpr int kRuleHyper = 16;
constexpr int kRowsHyper = 24;
constexpr int kHyperBlock = 25;

/** How a step's full-size optimizer slots are stored (the session's state_dtype). */
enum StateDtype { kStateFloat32, kStateBfloat16, kStateQ8, kNumStateDtypes };

/**
 * q8 state (q8map.h): one uint8 code per element, then, at byte
 * Q8AbsmaxOffset(n), one float32 absmax per block of kQ8Block elements
 * (blocks start at element 0; the last may be short). One buffer per slot.
 */
constexpr size_t kQ8Block = 256;
inline size_t Q8Blocks(size_t n) { return (n + kQ8Block - 1) / kQ8Block; }
inline size_t Q8AbsmaxOffset(size_t n) { return (n + 3) / 4 * 4; }
inline size_t Q8Bytes(size_t n) { return Q8AbsmaxOffset(n) + 4 * Q8Blocks(n); }

struct Job {
  float* theta;
  const float* grad;
  size_t n;
  float* slot[kMaxOptSlots];        // float32 slots, and every one-element slot; nullptr where unused
  uint16_t* slot16[kMaxOptSlots];   // bfloat16 slots (full-size ones of a kStateBfloat16 step); ditto
  uint8_t* slot8[kMaxOptSlots];     // q8 codes (full-size slots of a kStateQ8 step); ditto
  float* absmax[kMaxOptSlots];      // their blocks' absmax (kernel.h Q8AbsmaxOffset), beside slot8
  uint32_t q8_unsigned;             // bit k: slot k takes the unsigned q8 map (Descriptor::unsigned_slots)
  float* rule_slot[kMaxRuleSlots];  // ditto (every rule slot so far is one element, always float32)
  const double* h;                  // kHyperBlock values
  uint32_t fresh;                   // bit k: optimizer slot k was just created (init "grad")
  uint64_t stream;                  // bfloat16 rounding: seed << 32 | parameter index (bf16-inl.h)
  // A row-sparse gradient (rows/ in docs/data-path.md): when rows is set,
  // theta and the slots are [n / row_len, row_len], grad holds nrows rows of
  // row_len values, packed, for the strictly increasing row indices `rows`,
  // and only those rows of theta and of the non-scalar slots are touched.
  const uint32_t* rows = nullptr;
  size_t nrows = 0;
  size_t row_len = 0;
};

/** The gradient's element count: n, or the packed rows of a row-sparse one. */
inline size_t GradElements(const Job& j) { return j.rows != nullptr ? j.nrows * j.row_len : j.n; }

/** Names an engine binding needs to lay out jobs (target-independent). */
struct Descriptor {
  const char* name;
  const char* const* hypers;  // flattened table: "betas.0", "betas.1", booleans as 0/1
  int n_hypers;
  const char* const* slots;  // positional slot names
  int n_slots;
  uint32_t scalar_slots;  // bit k: slot k holds one element, not n
  // bit k: slot k is never negative (exp_avg_sq, sum, ...): q8 state stores it
  // with the unsigned map (q8map.h), the others with the signed one.
  uint32_t unsigned_slots = 0;
  // bit k: slot k is float32 whatever the state dtype (Schedule-Free's
  // iterate z, which the rule acts on; Adafactor's factored statistics,
  // O(rows + cols)): a bfloat16 or q8 step passes it as a Float32Array.
  uint32_t wide_slots = 0;
  // Slots sized by the parameter's shape (Adafactor's row and column means):
  // slot k's length for a job of n elements and hyperparameter block h, or
  // nullptr where every slot is per element or scalar.
  size_t (*slot_size)(int k, size_t n, const double* h) = nullptr;
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
  kAdafactor,
  kSparseAdam,
  kMuon,
  kScheduleFreeAdamW,
  kNumOptimizers
};
enum RuleId { kAdditive, kMultiplicative, kHybrid, kExpSign, kNumRules };

const Descriptor& OptimizerDescriptor(int id);
const Descriptor& RuleDescriptor(int id);

/** Returns "" on success, else why the step was refused (nothing was written). */
std::string RunStep(int opt, int rule, int dtype, const Job* jobs, size_t njobs);
/** The same for each dtype (kernels.cc, kernels-bf16.cc); RunStep picks one. */
std::string RunStepFloat32(int opt, int rule, const Job* jobs, size_t njobs);
std::string RunStepBfloat16(int opt, int rule, const Job* jobs, size_t njobs);
std::string RunStepQ8(int opt, int rule, const Job* jobs, size_t njobs);
/**
 * Whether optimizer `opt` takes compact state (bfloat16, q8): every one whose
 * kernel reaches its full-size slots only through LoadSlot/StoreSlot, the
 * whole-slot ReadWholeSlot/WriteWholeSlot (Muon) or keeps them float32
 * (Descriptor::wide_slots). Every optimizer does since issue 23.
 */
bool OptimizerTakesCompact(int opt);
/** Index of the first NaN or infinity, or -1. */
int64_t FirstNonFinite(const float* x, size_t n);
/** The same, and a 64-bit digest of the bytes (independent of the thread count). */
int64_t Scan(const float* x, size_t n, uint64_t* digest);
/** Sum of squares in double. */
double SumSquares(const float* x, size_t n);
/** The SIMD target chosen at run time, e.g. "AVX3". */
const char* TargetName();

}  // namespace mur
