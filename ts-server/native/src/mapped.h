// A mapping (mmap) handed to JavaScript as an external ArrayBuffer that owns
// it: collected, the buffer unmaps it and gives back its external-memory
// accounting. Arenas (arena.cc) and huge-page state (state.cc) use it.
#pragma once
#include <napi.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace mur {

// `mapped` bytes at `addr` (what munmap releases); the buffer shows the first
// `visible` of them.
inline Napi::ArrayBuffer MappedBuffer(Napi::Env env, void* addr, size_t mapped, size_t visible) {
  struct Mapping {
    void* addr;
    size_t bytes;
  };
  auto* m = new Mapping{addr, mapped};
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, addr, visible,
      [](Napi::Env fenv, void*, Mapping* mp) {
        munmap(mp->addr, mp->bytes);
        Napi::MemoryManagement::AdjustExternalMemory(fenv, -static_cast<int64_t>(mp->bytes));
        delete mp;
      },
      m);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(mapped));
  return buffer;
}

}  // namespace mur
