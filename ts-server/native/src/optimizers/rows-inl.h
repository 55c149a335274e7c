// Row-sparse jobs (kernel.h: Job::rows): where a packed gradient row lands in
// theta and the slots, and how many rows make one task. The fused loop
// (kernels.cc) runs each row as a dense range whose gradient is `row_len *
// (rows[r] - r)` elements before it; scalar slots (one element per tensor)
// are indexed as in a dense step, so a rule's bound stays the tensor's.
#ifndef MUR_ROWS_INL_H_
#define MUR_ROWS_INL_H_
#include <cstddef>

#include "kernel.h"
#include "tasks.h"

namespace mur {

/** Why an optimizer that reduces over its whole tensor (LAMB, LARS) cannot take rows. */
inline constexpr const char* kNoRows = "row-sparse gradients need an elementwise optimizer";

/** The first element of the r-th gradient row in theta and the slots. */
inline size_t RowStart(const Job& j, size_t r) { return static_cast<size_t>(j.rows[r]) * j.row_len; }

/** Whether gradient rows a < b of a q8 job meet in one block (kernel.h kQ8Block): row a's last element's and row b's
 * first. */
inline bool SameQ8Block(const Job& j, size_t a, size_t b) {
  return j.row_len > 0 && (RowStart(j, a) + j.row_len - 1) / kQ8Block == RowStart(j, b) / kQ8Block;
}

/** Rows per task: about kChunk elements, at least one row. */
inline size_t RowsPerTask(const Job& j) {
  const size_t rows = j.row_len == 0 ? kChunk : kChunk / j.row_len;
  return rows == 0 ? 1 : rows;
}

}  // namespace mur
#endif
