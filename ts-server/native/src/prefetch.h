// Whether the finiteness scan asks for its stream's lines ahead (ScanRange,
// kernels.cc). One read stream alone gets too few lines in flight from the
// hardware prefetchers on the Intel Xeon of the earlier runs: there a
// prefetch 4 KiB ahead made the 64M scan 24.2 -> 16.9 ms. On the AMD EPYC
// (Zen 5) of later runs the same prefetch makes it slower (a C loop over a
// memfd, 64M floats, one thread: 18-21 GB/s with it, 21-26 without; two
// threads 29 against 33 GB/s), so the choice is the CPU's: on by default on
// Intel, off elsewhere. MUR_SCAN_PREFETCH=1 or 0 overrides it (for
// measuring both on one machine: docs/engine.md, "The scan's prefetch").
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace mur {

inline bool CpuIsIntel() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char v[13];
  std::memcpy(v, &b, 4);
  std::memcpy(v + 4, &d, 4);
  std::memcpy(v + 8, &c, 4);
  v[12] = '\0';
  return std::strcmp(v, "GenuineIntel") == 0;
#else
  return false;
#endif
}

/** The scan's prefetch policy, decided once per process. */
inline bool ScanPrefetches() {
  static const bool on = [] {
    const char* e = std::getenv("MUR_SCAN_PREFETCH");
    if (e != nullptr && (std::strcmp(e, "0") == 0 || std::strcmp(e, "1") == 0)) return e[0] == '1';
    return CpuIsIntel();
  }();
  return on;
}

}  // namespace mur
