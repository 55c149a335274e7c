// The fast lane of the same-host transport (lane.cc).
#pragma once
#include <cstdint>
#include <vector>

#include "kernel.h"

namespace mur {
class Lane;
/** A lane on an arena (its base address); starts its thread. */
Lane* LaneCreate(void* arena);
/** Stops the thread and frees the lane. */
void LaneDestroy(Lane* lane);
/** Takes requests for these jobs (every arena tensor, in arena order); `hypers` is copied. */
void LaneArm(Lane* lane, int opt, int rule, int dtype, std::vector<Job> jobs, std::vector<double> hypers,
             uint64_t last_step);
/** Whether the lane stages each checked gradient's update (speculation, lane.cc); off frees its staging. */
void LaneSetStaging(Lane* lane, bool on);
/** Stops taking requests and reports the steps applied per job since Arm, and the last one. */
void LaneDisarm(Lane* lane, std::vector<uint64_t>* applied, uint64_t* last_step, std::vector<uint32_t>* last_indices);
}  // namespace mur
