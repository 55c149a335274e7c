// The Node-API binding of the native engine (node-addon-api). It checks the
// layout of every job before the kernel runs and throws a TypeError naming
// the bad argument; the element loops it calls live in the kernel files
// (kernels.cc, widen.cc, limit.cc, transcendental.cc).
//
//   describe() -> {optimizers, rules, target, threads, layout}
//   step(opt, rule, buffers, hypers, fresh[, dtype, streams])
//   stepAsync(opt, rule, buffers, hypers, fresh[, dtype, streams]) -> Promise<{nonFinite: [job, index]} | {digests:
//   hex[]}>
//       the same off Node's main thread (a libuv worker): first the
//       finiteness scan of every gradient (the first NaN/infinity found is
//       returned, nothing written), then the kernel
//       buffers: per job kStride entries [theta, grad, slot0..2, ruleSlot0]
//                (Float32Array, or null where unused)
//       hypers:  Float64Array, kHyperBlock values per job
//       fresh:   Uint32Array, one bitmask per job (slot created this step, init "grad")
//       dtype:   how full-size optimizer slots are stored: 0 float32 (default), 1 bfloat16
//                (then they are Uint16Arrays of bfloat16 bits; one-element and wide slots, Descriptor::
//                wide_slots, stay Float32Arrays),
//                2 q8 (then Uint8Arrays of kernel.h Q8Bytes(n): codes, then the blocks' absmax)
//       streams: Uint32Array, two per job: [seed, parameter index] of bfloat16 rounding (bf16-inl.h)
//       rows:    optional (after dtype, streams when they are given), one entry per job: null
//                (dense) or a Uint32Array of strictly increasing row indices; then grad holds
//                those rows, packed (kernel.h: Job::rows)
//   firstNonFinite(Float32Array) -> index or -1
//   scan(Float32Array) -> [index or -1, digest hex]: both in one pass
//   sumSquares(Float32Array) -> number
//   widenBf16(src, dst), widenF16(src, dst): wire gradients to float32 (widen.cc)
//   limit(p, g, m, v): the benchmark's limit kernel (limit.cc)
//   math("exp" | "exp_bounded" | "tanh", x, out): the rule kernels' exp and tanh (transcendental.cc), for tests
//   setThreads(n) (0: all hardware threads), threads() -> n
//   arenaCreate(bytes), arenaCloseFd(fd): shared memory (arena.cc)
//   allocFloats(n), allocBf16(n), allocQ8(n): the engine's own buffers, on huge pages from 2 MiB (state.cc)
//   q8Map(unsigned) -> [values, thresholds, lutOk], q8Codes(x, unsigned) -> codes: the q8 map (q8map.h)
//                and the kernels' quantisation of x (absmax 1), for tests
#include <napi.h>

#include <string>
#include <vector>

#include "arena.h"
#include "kernel.h"
#include "lane.h"
#include "limit.h"
#include "pool.h"
#include "prefetch.h"
#include "q8map.h"
#include "state.h"
#include "transcendental.h"
#include "widen.h"

namespace {

constexpr int kStride = 2 + mur::kMaxOptSlots + mur::kMaxRuleSlots;

Napi::Object DescribeOne(Napi::Env env, const mur::Descriptor& d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", d.name);
  Napi::Array hypers = Napi::Array::New(env, d.n_hypers);
  for (int i = 0; i < d.n_hypers; ++i) hypers.Set(i, d.hypers[i]);
  Napi::Array slots = Napi::Array::New(env, d.n_slots);
  for (int i = 0; i < d.n_slots; ++i) {
    Napi::Object s = Napi::Object::New(env);
    s.Set("name", d.slots[i]);
    s.Set("scalar", ((d.scalar_slots >> i) & 1u) != 0);
    s.Set("unsigned", ((d.unsigned_slots >> i) & 1u) != 0);
    s.Set("wide", ((d.wide_slots >> i) & 1u) != 0);
    slots.Set(i, s);
  }
  o.Set("hypers", hypers);
  o.Set("slots", slots);
  return o;
}

Napi::Value Describe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Array opts = Napi::Array::New(env, mur::kNumOptimizers);
  for (int i = 0; i < mur::kNumOptimizers; ++i) opts.Set(i, DescribeOne(env, mur::OptimizerDescriptor(i)));
  Napi::Array rules = Napi::Array::New(env, mur::kNumRules);
  for (int i = 0; i < mur::kNumRules; ++i) rules.Set(i, DescribeOne(env, mur::RuleDescriptor(i)));
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("stride", kStride);
  layout.Set("maxOptSlots", mur::kMaxOptSlots);
  layout.Set("maxRuleSlots", mur::kMaxRuleSlots);
  layout.Set("hyperBlock", mur::kHyperBlock);
  layout.Set("optHyper", mur::kOptHyper);
  layout.Set("ruleHyper", mur::kRuleHyper);
  layout.Set("rowsHyper", mur::kRowsHyper);
  out.Set("optimizers", opts);
  out.Set("rules", rules);
  out.Set("target", mur::TargetName());
  out.Set("threads", mur::Pool::Get().threads());
  out.Set("scanPrefetch", mur::ScanPrefetches());  // prefetch.h
  out.Set("layout", layout);
  return out;
}

[[noreturn]] void Fail(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }

/** The Float32Array at buffers[i], or nullptr for null/undefined. */
float* Floats(Napi::Env env, const Napi::Array& buffers, uint32_t i, size_t* len) {
  Napi::Value v = buffers.Get(i);
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    Fail(env, "buffers[" + std::to_string(i) + "]: expected a Float32Array or null");
  }
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  *len = a.ElementLength();
  // An empty array may have no backing store: any non-null pointer does, as nothing is read.
  static float empty = 0;
  return *len == 0 ? &empty : a.Data();
}

/**
 * A row-sparse job's rows (buffers entry `rows[k]`, a Uint32Array): strictly
 * increasing, inside theta's rows; the gradient holds whole rows of them.
 */
void ParseRows(Napi::Env env, const Napi::Value& v, const std::string& where, size_t gn, mur::Job* j) {
  if (v.IsNull() || v.IsUndefined()) return;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    Fail(env, where + ": rows must be a Uint32Array or null");
  }
  Napi::Uint32Array r = v.As<Napi::Uint32Array>();
  static const uint32_t none = 0;
  j->nrows = r.ElementLength();
  j->rows = j->nrows == 0 ? &none : r.Data();
  if (j->nrows == 0) {
    if (gn != 0) Fail(env, where + ": no rows but " + std::to_string(gn) + " gradient elements");
    return;
  }
  if (gn % j->nrows != 0 || gn == 0)
    Fail(env, where + ": " + std::to_string(gn) + " gradient elements are not whole rows");
  j->row_len = gn / j->nrows;
  if (j->n % j->row_len != 0) Fail(env, where + ": theta is not rows of " + std::to_string(j->row_len));
  const size_t nrows_theta = j->n / j->row_len;
  for (size_t k = 0; k < j->nrows; ++k) {
    if (j->rows[k] >= nrows_theta || (k > 0 && j->rows[k] <= j->rows[k - 1])) {
      Fail(env, where + ": rows[" + std::to_string(k) + "] = " + std::to_string(j->rows[k]) +
                    " is out of order or past the last row");
    }
  }
}

/** The Uint16Array at buffers[i] (bfloat16 bits), or nullptr for null/undefined. */
uint16_t* Halves(Napi::Env env, const Napi::Array& buffers, uint32_t i, size_t* len) {
  Napi::Value v = buffers.Get(i);
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array) {
    Fail(env, "buffers[" + std::to_string(i) + "]: expected a Uint16Array (bfloat16 state) or null");
  }
  Napi::Uint16Array a = v.As<Napi::Uint16Array>();
  *len = a.ElementLength();
  static uint16_t empty = 0;
  return *len == 0 ? &empty : a.Data();
}

/** The Uint8Array at buffers[i] (a q8 slot), or nullptr for null/undefined. */
uint8_t* Bytes(Napi::Env env, const Napi::Array& buffers, uint32_t i, size_t* len) {
  Napi::Value v = buffers.Get(i);
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Fail(env, "buffers[" + std::to_string(i) + "]: expected a Uint8Array (q8 state) or null");
  }
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  *len = a.ElementLength();
  if (reinterpret_cast<uintptr_t>(a.Data()) % 4 != 0)
    Fail(env, "buffers[" + std::to_string(i) + "]: a q8 slot must start 4-byte aligned");
  static uint8_t empty[4] = {0, 0, 0, 0};
  return *len == 0 ? empty : a.Data();
}

/**
 * Checks the arguments (opt, rule, buffers, hypers, fresh[, dtype, streams][, rows]) at args[at..] and lays out
 * the jobs.
 */
std::vector<mur::Job> ParseJobsAt(const Napi::CallbackInfo& info, size_t at, int* opt_out, int* rule_out,
                                  int* dtype_out) {
  Napi::Env env = info.Env();
  const size_t extra = info.Length() < at + 5 ? 99 : info.Length() - (at + 5);
  const bool typed = extra == 2 || extra == 3;
  const bool sparse = extra == 1 || extra == 3;
  const size_t rows_at = at + 5 + (typed ? 2 : 0);
  if (extra > 3 || !info[at].IsNumber() || !info[at + 1].IsNumber() || !info[at + 2].IsArray() ||
      !info[at + 3].IsTypedArray() || !info[at + 4].IsTypedArray() ||
      (typed && (!info[at + 5].IsNumber() || !info[at + 6].IsTypedArray())) || (sparse && !info[rows_at].IsArray())) {
    Fail(env, "step(opt, rule, buffers, hypers, fresh[, dtype, streams][, rows]): bad arguments");
  }
  const int opt = info[at].As<Napi::Number>().Int32Value();
  const int rule = info[at + 1].As<Napi::Number>().Int32Value();
  const int dtype = typed ? info[at + 5].As<Napi::Number>().Int32Value() : mur::kStateFloat32;
  if (opt < 0 || opt >= mur::kNumOptimizers) Fail(env, "step: unknown optimizer id " + std::to_string(opt));
  if (rule < 0 || rule >= mur::kNumRules) Fail(env, "step: unknown rule id " + std::to_string(rule));
  if (dtype < 0 || dtype >= mur::kNumStateDtypes) Fail(env, "step: unknown state dtype id " + std::to_string(dtype));
  const mur::Descriptor& od = mur::OptimizerDescriptor(opt);
  const mur::Descriptor& rd = mur::RuleDescriptor(rule);
  Napi::Array buffers = info[at + 2].As<Napi::Array>();
  if (info[at + 3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    Fail(env, "step: hypers must be a Float64Array");
  if (info[at + 4].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    Fail(env, "step: fresh must be a Uint32Array");
  if (typed && info[at + 6].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    Fail(env, "step: streams must be a Uint32Array");
  Napi::Float64Array hypers = info[at + 3].As<Napi::Float64Array>();
  Napi::Uint32Array fresh = info[at + 4].As<Napi::Uint32Array>();
  if (buffers.Length() % kStride != 0)
    Fail(env, "step: buffers.length must be a multiple of " + std::to_string(kStride));
  const size_t njobs = buffers.Length() / kStride;
  if (hypers.ElementLength() != njobs * mur::kHyperBlock)
    Fail(env, "step: hypers.length must be jobs * " + std::to_string(mur::kHyperBlock));
  if (fresh.ElementLength() != njobs) Fail(env, "step: fresh.length must equal the number of jobs");
  if (sparse && info[rows_at].As<Napi::Array>().Length() != njobs)
    Fail(env, "step: rows.length must equal the number of jobs");
  const uint32_t* streams = nullptr;
  if (typed) {
    Napi::Uint32Array st = info[at + 6].As<Napi::Uint32Array>();
    if (st.ElementLength() != 2 * njobs) Fail(env, "step: streams.length must be 2 * the number of jobs");
    streams = st.Data();
  }
  if (dtype != mur::kStateFloat32 && !mur::OptimizerTakesCompact(opt))
    Fail(env, std::string("step: ") + od.name + " does not take state_dtype " +
                  (dtype == mur::kStateBfloat16 ? "bfloat16" : "q8"));

  std::vector<mur::Job> jobs(njobs);
  for (size_t k = 0; k < njobs; ++k) {
    const uint32_t base = static_cast<uint32_t>(k * kStride);
    const std::string where = "job " + std::to_string(k);
    mur::Job& j = jobs[k];
    size_t n = 0, gn = 0;
    j.theta = Floats(env, buffers, base, &n);
    j.grad = Floats(env, buffers, base + 1, &gn);
    if (j.theta == nullptr || j.grad == nullptr) Fail(env, where + ": theta and grad are required");
    j.n = n;
    if (sparse) ParseRows(env, info[rows_at].As<Napi::Array>().Get(static_cast<uint32_t>(k)), where, gn, &j);
    if (j.rows == nullptr && gn != n) {
      Fail(env, where + ": grad has " + std::to_string(gn) + " elements, theta " + std::to_string(n));
    }
    auto check = [&](size_t len, int k2, const mur::Descriptor& d) {
      if (k2 >= d.n_slots) Fail(env, where + ": " + d.name + " has no slot " + std::to_string(k2));
      const bool scalar = ((d.scalar_slots >> k2) & 1u) != 0;
      const size_t want = d.slot_size ? d.slot_size(k2, n, hypers.Data() + k * mur::kHyperBlock) : n;
      if (scalar ? len < 1 : len != want) {
        Fail(env, where + ": slot '" + d.slots[k2] + "' has " + std::to_string(len) + " elements, expected " +
                      (scalar ? std::string("1") : std::to_string(want)));
      }
    };
    auto slot = [&](uint32_t at2, int k2, const mur::Descriptor& d) -> float* {
      size_t len = 0;
      float* p = Floats(env, buffers, at2, &len);
      if (p != nullptr) check(len, k2, d);
      return p;
    };
    j.q8_unsigned = od.unsigned_slots;
    for (int s = 0; s < mur::kMaxOptSlots; ++s) {
      j.slot[s] = nullptr;
      j.slot16[s] = nullptr;
      j.slot8[s] = nullptr;
      j.absmax[s] = nullptr;
      // One-element and wide slots (Descriptor::wide_slots) are float32 whatever the dtype.
      const bool scalar = s < od.n_slots && (((od.scalar_slots | od.wide_slots) >> s) & 1u) != 0;
      if (dtype == mur::kStateBfloat16 && !scalar) {
        size_t len = 0;
        j.slot16[s] = Halves(env, buffers, base + 2 + s, &len);
        if (j.slot16[s] != nullptr) check(len, s, od);
      } else if (dtype == mur::kStateQ8 && !scalar) {
        size_t len = 0;
        j.slot8[s] = Bytes(env, buffers, base + 2 + s, &len);
        if (j.slot8[s] != nullptr) {
          if (s >= od.n_slots) Fail(env, where + ": " + od.name + " has no slot " + std::to_string(s));
          if (len != mur::Q8Bytes(n)) {
            Fail(env, where + ": q8 slot '" + od.slots[s] + "' has " + std::to_string(len) + " bytes, expected " +
                          std::to_string(mur::Q8Bytes(n)));
          }
          j.absmax[s] = reinterpret_cast<float*>(j.slot8[s] + mur::Q8AbsmaxOffset(n));
        }
      } else {
        j.slot[s] = slot(base + 2 + s, s, od);
      }
    }
    for (int s = 0; s < mur::kMaxRuleSlots; ++s) j.rule_slot[s] = slot(base + 2 + mur::kMaxOptSlots + s, s, rd);
    j.h = hypers.Data() + k * mur::kHyperBlock;
    j.fresh = fresh[k];
    j.stream = streams ? (static_cast<uint64_t>(streams[2 * k]) << 32) | streams[2 * k + 1] : 0;
  }
  *opt_out = opt;
  *rule_out = rule;
  *dtype_out = dtype;
  return jobs;
}

std::vector<mur::Job> ParseJobs(const Napi::CallbackInfo& info, int* opt_out, int* rule_out, int* dtype_out) {
  return ParseJobsAt(info, 0, opt_out, rule_out, dtype_out);
}

/** q8Map(unsigned) -> [values, thresholds, lutOk] (Float32Arrays of 256; whether the kernels use the bucket table). */
Napi::Value Q8MapJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsBoolean()) Fail(env, "q8Map(unsigned): a boolean");
  const mur::Q8Map& m = mur::Q8MapOf(info[0].As<Napi::Boolean>().Value());
  Napi::Float32Array v = Napi::Float32Array::New(env, 256), t = Napi::Float32Array::New(env, 256);
  for (int i = 0; i < 256; ++i) {
    v[i] = m.value[i];
    t[i] = m.threshold[i];
  }
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, v);
  out.Set(1u, t);
  out.Set(2u, Napi::Boolean::New(env, m.lut_ok));
  return out;
}

/** q8Codes(x: Float32Array, unsigned) -> Uint8Array: the kernels' codes of x (absmax 1), for tests. */
Napi::Value Q8CodesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsTypedArray() || !info[1].IsBoolean() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    Fail(env, "q8Codes(x: Float32Array, unsigned: boolean)");
  Napi::Float32Array x = info[0].As<Napi::Float32Array>();
  Napi::Uint8Array out = Napi::Uint8Array::New(env, x.ElementLength());
  if (x.ElementLength() > 0) mur::Q8Codes(x.Data(), x.ElementLength(), info[1].As<Napi::Boolean>().Value(), out.Data());
  return out;
}

Napi::Value Step(const Napi::CallbackInfo& info) {
  int opt = 0, rule = 0, dtype = 0;
  std::vector<mur::Job> jobs = ParseJobs(info, &opt, &rule, &dtype);
  std::string err = mur::RunStep(opt, rule, dtype, jobs.data(), jobs.size());
  if (!err.empty()) Fail(info.Env(), "step: " + err);
  return info.Env().Undefined();
}

std::string Hex(uint64_t v) {
  static const char* d = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[i] = d[v & 15];
  return s;
}

Napi::Array DigestArray(Napi::Env env, const std::vector<uint64_t>& digests) {
  Napi::Array a = Napi::Array::New(env, digests.size());
  for (size_t i = 0; i < digests.size(); ++i) a.Set(static_cast<uint32_t>(i), Hex(digests[i]));
  return a;
}

/** A step on a libuv worker thread. It holds references to every buffer so none is collected meanwhile. */
class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Env env, const Napi::CallbackInfo& info, int opt, int rule, int dtype, std::vector<mur::Job> jobs)
      : Napi::AsyncWorker(env, "mur.step"),
        deferred_(Napi::Promise::Deferred::New(env)),
        opt_(opt),
        rule_(rule),
        dtype_(dtype),
        jobs_(std::move(jobs)) {
    for (size_t i = 2; i < info.Length(); ++i) {
      if (info[i].IsObject()) keep_.push_back(Napi::Persistent(info[i].As<Napi::Object>()));
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    digests_.resize(jobs_.size());
    for (size_t k = 0; k < jobs_.size(); ++k) {
      const int64_t i = mur::Scan(jobs_[k].grad, mur::GradElements(jobs_[k]), &digests_[k]);
      if (i >= 0) {
        bad_job_ = static_cast<int64_t>(k);
        bad_index_ = i;
        return;  // nothing written
      }
    }
    std::string err = mur::RunStep(opt_, rule_, dtype_, jobs_.data(), jobs_.size());
    if (!err.empty()) SetError("step: " + err);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object out = Napi::Object::New(env);
    if (bad_job_ >= 0) {
      Napi::Array bad = Napi::Array::New(env, 2);
      bad.Set(0u, Napi::Number::New(env, static_cast<double>(bad_job_)));
      bad.Set(1u, Napi::Number::New(env, static_cast<double>(bad_index_)));
      out.Set("nonFinite", bad);
    } else {
      out.Set("digests", DigestArray(env, digests_));
    }
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(Napi::TypeError::New(Env(), e.Message()).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int opt_, rule_, dtype_;
  std::vector<mur::Job> jobs_;
  std::vector<Napi::ObjectReference> keep_;
  int64_t bad_job_ = -1, bad_index_ = -1;
  std::vector<uint64_t> digests_;
};

Napi::Value StepAsync(const Napi::CallbackInfo& info) {
  int opt = 0, rule = 0, dtype = 0;
  std::vector<mur::Job> jobs = ParseJobs(info, &opt, &rule, &dtype);
  auto* w = new StepWorker(info.Env(), info, opt, rule, dtype, std::move(jobs));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Float32Array Arg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    Fail(info.Env(), std::string(fn) + ": expected a Float32Array");
  }
  return info[0].As<Napi::Float32Array>();
}

Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
  Napi::Float32Array a = Arg(info, "firstNonFinite");
  return Napi::Number::New(info.Env(), static_cast<double>(mur::FirstNonFinite(a.Data(), a.ElementLength())));
}

/** scan(Float32Array) -> [first non-finite index or -1, digest hex] */
Napi::Value Scan(const Napi::CallbackInfo& info) {
  Napi::Float32Array a = Arg(info, "scan");
  uint64_t digest = 0;
  const int64_t i = mur::Scan(a.Data(), a.ElementLength(), &digest);
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), static_cast<double>(i)));
  out.Set(1u, Hex(digest));
  return out;
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  Napi::Float32Array a = Arg(info, "sumSquares");
  return Napi::Number::New(info.Env(), mur::SumSquares(a.Data(), a.ElementLength()));
}

/**
 * widenBf16(src: Uint8Array, dst: Float32Array), widenF16(src, dst): bfloat16
 * or float16 gradients from the wire (little-endian, any alignment) to
 * float32, exactly (widen.cc).
 */
Napi::Value Widen(const Napi::CallbackInfo& info, const char* fn, void (*widen)(const uint8_t*, uint32_t*, size_t)) {
  if (info.Length() != 2 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    Fail(info.Env(), std::string(fn) + "(src, dst): expected a Uint8Array and a Float32Array");
  }
  Napi::Uint8Array src = info[0].As<Napi::Uint8Array>();
  Napi::Float32Array dst = info[1].As<Napi::Float32Array>();
  const size_t n = dst.ElementLength();
  if (src.ByteLength() != 2 * n) Fail(info.Env(), std::string(fn) + ": src must hold 2 bytes per dst element");
  widen(src.Data(), reinterpret_cast<uint32_t*>(dst.Data()), n);
  return info.Env().Undefined();
}

/** math(fn: "exp" | "exp_bounded" | "tanh", x: Float32Array, out: Float32Array): the rule kernels' exp, exp for
 * |x| <= 86, or tanh (transcendental-inl.h), for tests. */
Napi::Value MathJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsString())
    Fail(env, "math(fn, x, out): fn must be 'exp', 'exp_bounded' or 'tanh'");
  const std::string fn = info[0].As<Napi::String>().Utf8Value();
  if (fn != "exp" && fn != "exp_bounded" && fn != "tanh") Fail(env, "math: fn must be 'exp', 'exp_bounded' or 'tanh'");
  for (size_t k = 1; k < 3; ++k) {
    if (!info[k].IsTypedArray() || info[k].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      Fail(env, "math(fn, x, out): x and out must be Float32Arrays");
    }
  }
  Napi::Float32Array x = info[1].As<Napi::Float32Array>(), out = info[2].As<Napi::Float32Array>();
  if (x.ElementLength() != out.ElementLength()) Fail(env, "math: x and out must have one length");
  (fn == "exp"           ? mur::ExpArray
   : fn == "exp_bounded" ? mur::ExpBoundedArray
                         : mur::TanhArray)(x.Data(), out.Data(), x.ElementLength());
  return env.Undefined();
}

/** limit(p, g, m, v): the limit kernel (limit.cc) on four Float32Arrays of one length. */
Napi::Value LimitJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float* a[4];
  size_t n = 0;
  if (info.Length() != 4) Fail(env, "limit(p, g, m, v): expected four Float32Arrays");
  for (size_t k = 0; k < 4; ++k) {
    if (!info[k].IsTypedArray() || info[k].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      Fail(env, "limit(p, g, m, v): expected four Float32Arrays");
    }
    Napi::Float32Array f = info[k].As<Napi::Float32Array>();
    if (k > 0 && f.ElementLength() != n) Fail(env, "limit: the four arrays must have one length");
    n = f.ElementLength();
    a[k] = f.Data();
  }
  mur::Limit(a[0], a[1], a[2], a[3], n);
  return env.Undefined();
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  if (info.Length() != 1 || !info[0].IsNumber()) Fail(info.Env(), "setThreads(n): n must be a number");
  mur::Pool::Get().SetThreads(info[0].As<Napi::Number>().Int32Value());
  return Napi::Number::New(info.Env(), mur::Pool::Get().threads());
}

Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), mur::Pool::Get().threads());
}

// -- the fast lane (lane.cc) --------------------------------------------------
struct LaneHolder {
  mur::Lane* lane;
};

LaneHolder* HolderOf(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) Fail(info.Env(), "lane: expected a lane handle");
  LaneHolder* h = info[0].As<Napi::External<LaneHolder>>().Data();
  if (h->lane == nullptr) Fail(info.Env(), "lane: closed");
  return h;
}

/** laneCreate(arena: ArrayBuffer) -> handle */
Napi::Value LaneCreateJs(const Napi::CallbackInfo& info) {
  if (info.Length() != 1 || !info[0].IsArrayBuffer())
    Fail(info.Env(), "laneCreate(arena): expected the arena's ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.ByteLength() < 4096) Fail(info.Env(), "laneCreate: the arena is smaller than its header");
  auto* h = new LaneHolder{mur::LaneCreate(ab.Data())};
  return Napi::External<LaneHolder>::New(info.Env(), h, [](Napi::Env, LaneHolder* hp) {
    if (hp->lane) mur::LaneDestroy(hp->lane);
    delete hp;
  });
}

/**
 * laneArm(handle, lastStep, opt, rule, buffers, hypers, fresh[, dtype, streams]): the caller keeps the buffers alive
 * until laneDisarm.
 */
Napi::Value LaneArmJs(const Napi::CallbackInfo& info) {
  LaneHolder* h = HolderOf(info);
  if (!info[1].IsNumber()) Fail(info.Env(), "laneArm: lastStep must be a number");
  int opt = 0, rule = 0, dtype = 0;
  std::vector<mur::Job> jobs = ParseJobsAt(info, 2, &opt, &rule, &dtype);
  Napi::Float64Array hy = info[5].As<Napi::Float64Array>();
  std::vector<double> hypers(hy.Data(), hy.Data() + hy.ElementLength());
  mur::LaneArm(h->lane, opt, rule, dtype, std::move(jobs), std::move(hypers),
               static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue()));
  return info.Env().Undefined();
}

/** laneDisarm(handle) -> {applied: number[], lastStep, lastIndices: number[]} */
Napi::Value LaneDisarmJs(const Napi::CallbackInfo& info) {
  LaneHolder* h = HolderOf(info);
  std::vector<uint64_t> applied;
  uint64_t last = 0;
  std::vector<uint32_t> idx;
  mur::LaneDisarm(h->lane, &applied, &last, &idx);
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Array a = Napi::Array::New(env, applied.size());
  for (size_t i = 0; i < applied.size(); ++i) a.Set(static_cast<uint32_t>(i), static_cast<double>(applied[i]));
  Napi::Array ix = Napi::Array::New(env, idx.size());
  for (size_t i = 0; i < idx.size(); ++i) ix.Set(static_cast<uint32_t>(i), idx[i]);
  out.Set("applied", a);
  out.Set("lastStep", static_cast<double>(last));
  out.Set("lastIndices", ix);
  return out;
}

/** laneStaging(handle, on): whether the lane stages updates while backward runs (lane.cc). */
Napi::Value LaneStagingJs(const Napi::CallbackInfo& info) {
  LaneHolder* h = HolderOf(info);
  if (info.Length() != 2 || !info[1].IsBoolean()) Fail(info.Env(), "laneStaging(handle, on): on must be a boolean");
  mur::LaneSetStaging(h->lane, info[1].As<Napi::Boolean>().Value());
  return info.Env().Undefined();
}

Napi::Value LaneCloseJs(const Napi::CallbackInfo& info) {
  LaneHolder* h = HolderOf(info);
  mur::LaneDestroy(h->lane);
  h->lane = nullptr;
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("laneCreate", Napi::Function::New(env, LaneCreateJs));
  exports.Set("laneArm", Napi::Function::New(env, LaneArmJs));
  exports.Set("laneDisarm", Napi::Function::New(env, LaneDisarmJs));
  exports.Set("laneStaging", Napi::Function::New(env, LaneStagingJs));
  exports.Set("laneClose", Napi::Function::New(env, LaneCloseJs));
  exports.Set("describe", Napi::Function::New(env, Describe));
  exports.Set("step", Napi::Function::New(env, Step));
  exports.Set("q8Map", Napi::Function::New(env, Q8MapJs));
  exports.Set("q8Codes", Napi::Function::New(env, Q8CodesJs));
  exports.Set("stepAsync", Napi::Function::New(env, StepAsync));
  exports.Set("firstNonFinite", Napi::Function::New(env, FirstNonFinite));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares));
  exports.Set("scan", Napi::Function::New(env, Scan));
  exports.Set("widenBf16", Napi::Function::New(
                               env, [](const Napi::CallbackInfo& i) { return Widen(i, "widenBf16", mur::WidenBf16); }));
  exports.Set("widenF16", Napi::Function::New(
                              env, [](const Napi::CallbackInfo& i) { return Widen(i, "widenF16", mur::WidenF16); }));
  exports.Set("math", Napi::Function::New(env, MathJs));
  exports.Set("limit", Napi::Function::New(env, LimitJs));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("threads", Napi::Function::New(env, Threads));
  mur::InitArena(env, exports);
  mur::InitState(env, exports);
  // Join the workers before the process tears down.
  napi_add_env_cleanup_hook(
      env, [](void*) { mur::Pool::Get().Stop(); }, nullptr);
  return exports;
}

}  // namespace

NODE_API_MODULE(mur_native, Init)
