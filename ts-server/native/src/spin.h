// Polling before sleeping. On a virtual machine a futex or condition-variable
// wake-up of a sleeping thread costs tens of microseconds (docs/data-path.md,
// "Wake-ups"); a thread that expects work within that time polls for it
// instead. One helper for every such poll: the pool's workers between batches
// and the fast lane between a step's announcement and its ring.
#pragma once

#include <chrono>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mur {

inline void CpuPause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

/** Polls `ready()` for up to `budget` (reading the clock every 64 polls): whether it became true. */
template <class Ready>
bool SpinUntil(Ready ready, std::chrono::nanoseconds budget) {
  const auto until = std::chrono::steady_clock::now() + budget;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      CpuPause();
    }
    if (std::chrono::steady_clock::now() >= until) return false;
  }
}

}  // namespace mur
