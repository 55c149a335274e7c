// Memory for what the native engine owns (parameters and optimizer state of
// sessions, outside any arena). Below 2 MiB a plain Float32Array; from 2 MiB
// an anonymous private mapping aligned to 2 MiB with MADV_HUGEPAGE, so that
// the kernel backs it with transparent huge pages (THP is `madvise` on common
// distributions, this machine included): a step streams four or more such
// arrays, and with 4 KiB pages every 4 KiB of each stream costs a TLB miss
// and restarts the hardware prefetcher. The pages are zero, as a new
// Float32Array's are. Shared arenas (memfd, arena.cc) cannot have them here:
// shmem THP is `never` and no hugetlbfs pages are reserved.
//
//   allocFloats(n) -> Float32Array of n zeros
//   allocBf16(n)   -> Uint16Array of n zeros (bfloat16 state, state_dtype "bfloat16")
//   allocQ8(n)     -> Uint8Array of Q8Bytes(n) zeros (q8 state: n codes, then the blocks' absmax; kernel.h)
#include "state.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernel.h"
#include "mapped.h"

namespace {

constexpr size_t kHuge = size_t{2} << 20;

/** `size` zero bytes: plain below 2 MiB, else 2 MiB-aligned with MADV_HUGEPAGE. */
Napi::ArrayBuffer AllocBytes(Napi::Env env, size_t size) {
  if (size < kHuge) return Napi::ArrayBuffer::New(env, size);
  // Map 2 MiB more than needed, keep the 2 MiB-aligned part, return the rest.
  const size_t bytes = (size + kHuge - 1) / kHuge * kHuge;
  char* raw =
      static_cast<char*>(mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (raw == MAP_FAILED) throw Napi::Error::New(env, std::string("mmap: ") + std::strerror(errno));
  char* addr = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) / kHuge * kHuge);
  if (addr > raw) munmap(raw, addr - raw);
  if (raw + kHuge > addr) munmap(addr + bytes, raw + kHuge - addr);
  madvise(addr, bytes, MADV_HUGEPAGE);  // advice: without THP the pages are ordinary ones
  return mur::MappedBuffer(env, addr, bytes, size);
}

/** n zeros of `width` bytes each (n from the call's one argument). */
Napi::ArrayBuffer Alloc(Napi::Env env, const Napi::CallbackInfo& info, const char* fn, size_t width, size_t* n_out) {
  if (info.Length() != 1 || !info[0].IsNumber())
    throw Napi::TypeError::New(env, std::string(fn) + "(n): n must be a number");
  const double want = info[0].As<Napi::Number>().DoubleValue();
  if (!(want >= 0 && want <= double(1ull << 44)))
    throw Napi::RangeError::New(env, std::string(fn) + ": n out of range");
  const size_t n = static_cast<size_t>(want);
  *n_out = n;
  return AllocBytes(env, n * width);
}

Napi::Value AllocFloats(const Napi::CallbackInfo& info) {
  size_t n = 0;
  Napi::ArrayBuffer b = Alloc(info.Env(), info, "allocFloats", sizeof(float), &n);
  return Napi::Float32Array::New(info.Env(), n, b, 0);
}

Napi::Value AllocBf16(const Napi::CallbackInfo& info) {
  size_t n = 0;
  Napi::ArrayBuffer b = Alloc(info.Env(), info, "allocBf16", sizeof(uint16_t), &n);
  return Napi::Uint16Array::New(info.Env(), n, b, 0);
}

Napi::Value AllocQ8(const Napi::CallbackInfo& info) {
  if (info.Length() != 1 || !info[0].IsNumber())
    throw Napi::TypeError::New(info.Env(), "allocQ8(n): n must be a number");
  const double want = info[0].As<Napi::Number>().DoubleValue();
  if (!(want >= 0 && want <= double(1ull << 44))) throw Napi::RangeError::New(info.Env(), "allocQ8: n out of range");
  const size_t bytes = mur::Q8Bytes(static_cast<size_t>(want));  // n codes, then the blocks' absmax
  return Napi::Uint8Array::New(info.Env(), bytes, AllocBytes(info.Env(), bytes), 0);
}

}  // namespace

namespace mur {
void InitState(Napi::Env env, Napi::Object exports) {
  exports.Set("allocFloats", Napi::Function::New(env, AllocFloats));
  exports.Set("allocBf16", Napi::Function::New(env, AllocBf16));
  exports.Set("allocQ8", Napi::Function::New(env, AllocQ8));
}
}  // namespace mur
