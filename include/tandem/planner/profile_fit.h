// Turns measured times into a hardware profile the planner accepts in place of
// a spec-derived one. `tandem profile` measures attention against batch and
// context, experts against tokens per expert and M2N sends against bytes and
// fan-out through the project's own kernels and transport; this fits the
// profile's rates so that the planner's own formulas (perf_model.h), evaluated
// as the planner evaluates them, reproduce those times.
#pragma once

#include <vector>

#include "tandem/planner/hardware.h"
#include "tandem/planner/perf_model.h"

namespace tandem::planner {

struct ProfilePoints {
  struct Attention {
    int64_t batch = 0;
    double context = 0;
    double us = 0;  // one layer, one micro-batch
  };
  struct Experts {
    double tokens_per_expert = 0;
    double us = 0;  // one layer, every expert of the model
  };
  struct M2n {
    double bytes = 0;  // per destination
    int fanout = 0;
    double us = 0;     // from the first send to the last arrival
  };
  struct Head {
    int64_t batch = 0;
    double us = 0;  // embedding + final norm + LM head of one micro-batch
  };
  std::vector<Attention> attention;
  std::vector<Experts> experts;
  std::vector<Head> head;
  std::vector<M2n> m2n;
};

// `base` supplies what is not measured (name, device, memory size, price);
// compute, memory-bandwidth, overhead and network numbers are replaced, every
// efficiency set to 1 (the fitted rates are what was reached), kind "measured",
// and the points are recorded under `measurements`. Needs at least two
// attention points with different byte counts, one expert point and two M2N
// points with different sizes.
Result<HardwareProfile> fit_profile(const ModelShape& g, const ProfilePoints& points, HardwareProfile base);

}  // namespace tandem::planner
