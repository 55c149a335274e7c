// How a step is cut into tasks for the thread pool (pool.h), shared by the
// fused kernels, the finiteness scan and the limit kernel, so that all three
// are threaded the same way.
#pragma once
#include <cstddef>

namespace mur {
// Elements per task: 32Ki floats is 128 KiB per stream, large enough that a
// task's overhead vanishes, small enough to balance two cores.
constexpr size_t kChunk = size_t{1} << 15;
// Below this many elements in a step one thread is faster than waking the
// pool: one value for memory-bound kernels (the additive rule, the finiteness
// scan), one for kernels that evaluate tanh or exp per element. Measured with
// `node dist/bench/threshold.js` (ts-server).
constexpr size_t kParallelMinCheap = size_t{3} << 17;
constexpr size_t kParallelMinTranscendental = size_t{3} << 15;
}  // namespace mur
